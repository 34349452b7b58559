"""The agent over TLS on a real Mosquitto: client certificates, credentials, refusals, config."""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.commit_acker import CommitAcker
from support.edge_agent import AgentThread, agent_toml, make_config
from support.mqtt import Received
from support.tls_certs import CertAuthority, Pki, TlsProbe, make_pki, tls_listener

from edgefleet.cli import main
from edgefleet.cloud.broker import MosquittoBroker
from edgefleet.cloud.broker.base import free_port
from edgefleet.edge.config import AgentConfig
from edgefleet.edge.outbox import Outbox, OutboxStats
from edgefleet.edge.transport.mqtt import MqttTransport
from edgefleet.protocol import topics
from edgefleet.protocol.codec import decode
from edgefleet.protocol.errors import ConfigError, DecodeError
from edgefleet.protocol.messages import InferenceBatch, Status

USER, PASSWORD = "dev-1", "s3cret-dev-1"


@dataclass(frozen=True)
class TlsBroker:
    """A private Mosquitto with a plain listener (the cloud side) and a TLS one (devices)."""

    broker: MosquittoBroker
    tls_port: int
    pki: Pki


@pytest.fixture
def tls_broker(tmp_path: Path, mosquitto_factory: Callable[..., MosquittoBroker]) -> TlsBroker:
    """Mosquitto requiring a client certificate on its TLS port, with a password file."""
    exe = shutil.which("mosquitto_passwd")
    if exe is None:
        pytest.fail("mosquitto_passwd is not installed (it ships with the mosquitto package)")
    pki = make_pki(tmp_path / "pki", client=USER)
    passwords = tmp_path / "pki" / "passwd"
    subprocess.run([exe, "-b", "-c", str(passwords), USER, PASSWORD], check=True)
    port = free_port()
    broker = mosquitto_factory(extra_config=tls_listener(port, pki, password_file=passwords))
    return TlsBroker(broker, port, pki)


def _with_tls(text: str, lines: str) -> str:
    assert "[mqtt]\n" in text
    return text.replace("[mqtt]\n", "[mqtt]\n" + lines, 1)


def _tls_lines(pki: Pki, *, ca: Path | None = None, password: str = PASSWORD) -> str:
    return (
        "tls = true\n"
        f'ca_file = "{ca or pki.ca}"\n'
        f'cert_file = "{pki.client.cert}"\n'
        f'key_file = "{pki.client.key}"\n'
        f'username = "{USER}"\n'
        f'password = "{password}"\n'
    )


def _config(
    tb: TlsBroker,
    data: Path,
    bundle: Path,
    pub: Path,
    *,
    ca: Path | None = None,
    password: str = PASSWORD,
) -> AgentConfig:
    text = agent_toml(data, tb.tls_port, device=USER, bundle=bundle, keys=[pub])
    return make_config(_with_tls(text, _tls_lines(tb.pki, ca=ca, password=password)))


def _mqtt(runner: AgentThread) -> MqttTransport:
    transport = runner.agent.transport
    assert isinstance(transport, MqttTransport)
    return transport


def _stats(path: Path) -> OutboxStats:
    box = Outbox(path, readonly=True)
    try:
        return box.stats()
    finally:
        box.close()


def _decoded(msgs: list[Received]) -> list[object]:
    out: list[object] = []
    for m in msgs:
        try:
            out.append(decode(m.payload))
        except DecodeError:
            continue
    return out


def test_agent_over_tls_with_client_cert_and_password(
    tls_broker: TlsBroker, tmp_path: Path, good_bundle: Path, trusted_pub: Path
) -> None:
    tb = tls_broker
    probe = TlsProbe(tb.tls_port, tb.pki)
    probe.subscribe(topics.fleet_filter("default"))
    # The ingest stays on the plain listener: its commits must reach the device through TLS.
    acker = CommitAcker(tb.broker.host, tb.broker.port)
    cfg = _config(tb, tmp_path / "d", good_bundle, trusted_pub)
    runner = AgentThread(cfg)
    try:
        runner.wait_ready(online=False)
        boot = runner.agent.sequencer.boot_id

        def born_and_inferring(msgs: list[Received]) -> bool:
            got = _decoded(msgs)
            online = any(
                isinstance(m, Status) and m.state == "online" and m.boot_id == boot for m in got
            )
            return online and any(isinstance(m, InferenceBatch) for m in got)

        assert probe.wait_for(born_and_inferring, 15), _mqtt(runner).last_error
        assert acker.wait_for(lambda a: a.inference_records(USER) >= 3, timeout=15)

        def committed(_a: CommitAcker) -> bool:
            st = _stats(cfg.outbox_path)
            return st.boots.get(boot, 0) > st.depth  # rows were deleted on commit-ack

        assert acker.wait_for(committed, timeout=15)
        assert _mqtt(runner).connects == 1
        assert _mqtt(runner).last_error == ""
    finally:
        runner.stop()
        acker.close()
        probe.close()


@pytest.mark.parametrize(
    ("fault", "reason"),
    [("wrong_ca", "certificate verify failed"), ("bad_password", "refused")],
)
def test_refused_agent_retries_and_keeps_its_records(
    fault: str,
    reason: str,
    tls_broker: TlsBroker,
    tmp_path: Path,
    good_bundle: Path,
    trusted_pub: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    tb = tls_broker
    data = tmp_path / "d"
    if fault == "wrong_ca":
        other = CertAuthority(tmp_path / "other-ca", name="stranger-ca")
        cfg = _config(tb, data, good_bundle, trusted_pub, ca=other.ca_file)
    else:
        cfg = _config(tb, data, good_bundle, trusted_pub, password="wrong")
    caplog.set_level(logging.INFO, logger="edgefleet.edge.transport.mqtt")
    runner = AgentThread(cfg)
    try:
        runner.wait_ready(online=False)
        boot = runner.agent.sequencer.boot_id

        def failed_twice_with_records(_a: CommitAcker | None = None) -> bool:
            failures = [
                r
                for r in caplog.records
                if r.levelno >= logging.WARNING and reason in r.getMessage()
            ]
            return len(failures) >= 2 and _stats(cfg.outbox_path).depth >= 5

        acker = CommitAcker(tb.broker.host, tb.broker.port)
        try:
            assert acker.wait_for(failed_twice_with_records, timeout=15), (
                _mqtt(runner).last_error,
                [r.getMessage() for r in caplog.records],
            )
            assert runner.error is None
            assert _mqtt(runner).connects == 0
            assert reason in _mqtt(runner).last_error
            assert not acker.records, "a refused device delivered records"
        finally:
            acker.close()
    finally:
        runner.stop()
    kept = _stats(cfg.outbox_path)
    assert kept.drops == 0
    last = kept.boots[boot]
    assert kept.depth == last  # nothing was committed, nothing was lost

    # Fixed configuration, same device and outbox: everything the refused boot made arrives.
    acker = CommitAcker(tb.broker.host, tb.broker.port)
    again = AgentThread(_config(tb, data, good_bundle, trusted_pub))
    try:
        again.wait_ready(online=False)
        assert acker.wait_for(
            lambda a: a.seqs(USER).get(boot, set()) == set(range(1, last + 1)), timeout=15
        ), _mqtt(again).last_error
    finally:
        again.stop()
        acker.close()


@pytest.mark.parametrize(
    ("password", "code", "found"),
    [
        (PASSWORD, 0, "broker: connected to mqtts://127.0.0.1:{port} in "),
        (
            "wrong",
            7,
            "broker: cannot connect to mqtts://127.0.0.1:{port}: the broker refused the "
            "connection: CONNACK Not authorized (code 135) (check mqtt.username",
        ),
    ],
)
def test_agent_check_uses_tls_and_credentials(
    password: str,
    code: int,
    found: str,
    tls_broker: TlsBroker,
    tmp_path: Path,
    good_bundle: Path,
    trusted_pub: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tb = tls_broker
    text = agent_toml(
        tmp_path / "d", tb.tls_port, device=USER, bundle=good_bundle, keys=[trusted_pub]
    )
    path = tmp_path / "agent.toml"
    path.write_text(_with_tls(text, _tls_lines(tb.pki, password=password)))
    assert main(["agent", "check", "--config", str(path), "--windows", "1"]) == code
    out = capsys.readouterr().out
    line = next(s for s in out.splitlines() if s.startswith("broker:"))
    assert line.startswith(found.format(port=tb.tls_port)), line
    if code == 0:
        assert f"TLS, user {USER}" in line, line


@pytest.mark.parametrize("key", ["ca_file", "cert_file", "key_file"])
def test_missing_tls_file_is_refused_at_load(
    key: str, tmp_path: Path, good_bundle: Path, trusted_pub: Path
) -> None:
    pki = make_pki(tmp_path / "pki")
    lines = _tls_lines(pki)
    present = {"ca_file": pki.ca, "cert_file": pki.client.cert, "key_file": pki.client.key}[key]
    missing = tmp_path / "nowhere" / f"{key}.pem"
    text = agent_toml(tmp_path / "d", 8883, bundle=good_bundle, keys=[trusted_pub])
    with pytest.raises(ConfigError) as err:
        make_config(_with_tls(text, lines.replace(str(present), str(missing))))
    assert f"mqtt.{key}" in str(err.value)
    assert str(missing) in str(err.value)
