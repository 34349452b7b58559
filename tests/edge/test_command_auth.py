"""Forged, replayed, misdirected, expired and unsigned commands are refused and counted.

Real Mosquitto with no ACLs (anyone may publish on a device's cmd/ topics), a real agent. The
forger is an anonymous paho client; the genuine cloud is the test command key (support.trust).
"""

from __future__ import annotations

import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from support.commit_acker import CommitAcker
from support.edge_agent import AgentThread, agent_toml, make_config
from support.trust import command_private_key, sign_command

from edgefleet.protocol import codec, topics
from edgefleet.protocol.commandauth import Signer
from edgefleet.protocol.messages import Commit, CommitRange, Health, SetConfig
from edgefleet.protocol.signing import generate_keypair, load_private_key

DEVICE = "auth-1"


def _forger(port: int) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"forger-{time.monotonic_ns()}")
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def _send(client: mqtt.Client, topic: str, payload: bytes) -> None:
    client.publish(topic, payload, qos=1).wait_for_publish(5)


def _set_config(cid: str, values: dict[str, object]) -> SetConfig:
    return SetConfig(
        device_id="cloud",
        boot_id="cloud",
        seq=1,
        sent_at=time.time(),
        command_id=cid,
        values=values,  # type: ignore[arg-type]
    )


def _wait(pred, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return bool(pred())


@pytest.fixture
def agent(mosquitto, tmp_path: Path, good_bundle: Path, trusted_pub: Path):
    acker = CommitAcker(mosquitto.host, mosquitto.port)
    acker.pause()  # records pile up in the outbox: a forged commit could delete them
    runner = AgentThread(
        make_config(
            agent_toml(
                tmp_path / "d", mosquitto.port, device=DEVICE, bundle=good_bundle,
                keys=[trusted_pub],
            )
        )
    )  # fmt: skip
    runner.wait_ready()
    forger = _forger(mosquitto.port)
    yield acker, runner, forger
    forger.loop_stop()
    forger.disconnect()
    runner.stop()
    acker.close()


@pytest.mark.slow(seconds=15)
def test_forged_commits_delete_nothing(agent, tmp_path: Path) -> None:
    acker, runner, forger = agent
    a = runner.agent
    assert _wait(lambda: a.uplink.depth >= 50), a.uplink.depth
    boot = a.sequencer.boot_id
    depth = a.uplink.depth
    topic = topics.command("default", DEVICE, "commit")
    everything = Commit(
        device_id="cloud", boot_id="cloud", seq=1, sent_at=time.time(),
        ranges=[CommitRange(boot, 0, 10**9)],
    )  # fmt: skip
    # Unsigned, signed by a key the agent does not trust, and a genuine one re-targeted.
    _send(forger, topic, codec.encode(everything))
    other_key, _ = generate_keypair(tmp_path / "other")
    other = Signer(load_private_key(other_key))
    _send(forger, topic, other.seal(topic, everything, codec.JSON.encode))
    genuine_other = sign_command(topics.command("default", "someone-else", "commit"), everything)
    _send(forger, topic, genuine_other)
    refused = a.commands.guard.refused
    assert _wait(lambda: sum(refused.values()) >= 3), dict(refused)
    assert refused["unsigned"] == 1
    assert refused["bad-signature"] == 2
    assert a.uplink.counters.committed == 0
    assert a.uplink.depth >= depth  # nothing deleted; records keep coming
    # The genuine cloud's commit still works.
    acker.resume()
    assert _wait(lambda: a.uplink.counters.committed > 0, 20)


@pytest.mark.slow(seconds=12)
def test_forged_replayed_expired_and_misdirected_set_config_are_refused(agent) -> None:
    acker, runner, forger = agent
    a = runner.agent
    topic = topics.command("default", DEVICE, "set-config")
    before = a.cfg.outbox.max_records
    refused = a.commands.guard.refused

    _send(forger, topic, codec.encode(_set_config("f-1", {"outbox.max_records": 1})))
    assert _wait(lambda: refused["unsigned"] == 1), dict(refused)

    genuine = sign_command(topic, _set_config("g-1", {"health.interval_s": 0.7}))
    _send(forger, topic, genuine)
    assert _wait(lambda: a.cfg.health.interval_s == 0.7)
    _send(forger, topic, sign_command(topic, _set_config("g-2", {"health.interval_s": 0.5})))
    assert _wait(lambda: a.cfg.health.interval_s == 0.5)
    # The first genuine payload again, byte for byte: a replay.
    _send(forger, topic, genuine)
    assert _wait(lambda: refused["replayed"] == 1), dict(refused)

    old = Signer(load_private_key(command_private_key()), clock=lambda: time.time() - 7200)
    expired = old.seal(
        topic, _set_config("e-1", {"outbox.max_records": 1}), codec.JSON.encode, ttl_s=60
    )
    _send(forger, topic, expired)
    assert _wait(lambda: refused["expired"] == 1), dict(refused)

    other = topics.command("default", "auth-2", "set-config")
    misdirected = sign_command(other, _set_config("o-1", {"outbox.max_records": 1}))
    _send(forger, topic, misdirected)
    assert _wait(lambda: refused["bad-signature"] == 1), dict(refused)
    time.sleep(0.3)
    assert a.cfg.outbox.max_records == before
    assert a.cfg.health.interval_s == 0.5
    # No refusal is acked: a forger must not make the device publish at the forger's rate.
    assert not any(x.command_id in {"f-1", "e-1", "o-1"} for x in acker.acks)


@pytest.mark.slow(seconds=12)
def test_agent_without_command_keys_refuses_everything_and_says_so_in_health(
    mosquitto, tmp_path: Path
) -> None:
    acker = CommitAcker(mosquitto.host, mosquitto.port)
    runner = AgentThread(
        make_config(agent_toml(tmp_path / "d", mosquitto.port, device="nokeys", command_keys=[]))
    )
    try:
        runner.wait_ready()
        a = runner.agent
        topic = topics.command("default", "nokeys", "set-config")
        acker.client.publish(
            topic, sign_command(topic, _set_config("n-1", {"health.interval_s": 2}))
        )

        def latest() -> Health | None:
            with acker._cond:
                hs = [m for _t, m in acker.messages if isinstance(m, Health)]
            return hs[-1] if hs else None

        def reported() -> bool:
            h = latest()
            return h is not None and h.commands_refused.get("no-command-keys", 0) >= 2

        assert _wait(reported, 20), latest()
        h = latest()
        assert h is not None
        assert h.trust_error is not None
        assert "command_keys" in h.trust_error
        assert a.cfg.health.interval_s == 0.5
        # Commit-acks are refused too: nothing is ever deleted from its outbox.
        assert a.uplink.counters.committed == 0
    finally:
        runner.stop()
        acker.close()


@pytest.mark.slow(seconds=30)
def test_downgrade_refused_without_rollback_and_accepted_with_it(
    mosquitto, tmp_path: Path, tiny_zoo, signing_key, trusted_pub: Path, good_bundle: Path
) -> None:
    from support.edge_http import RangeServer
    from support.tiny_models import make_bundle, pack

    from edgefleet.protocol.bundle import VerifiedBundle, read_manifest
    from edgefleet.protocol.messages import AssignModel

    www = tmp_path / "www"
    www.mkdir()
    server = RangeServer(www)
    acker = CommitAcker(mosquitto.host, mosquitto.port)
    runner = AgentThread(
        make_config(
            agent_toml(
                tmp_path / "d", mosquitto.port, device="down-1", bundle=good_bundle,
                keys=[trusted_pub],
            )
        )
    )  # fmt: skip
    try:
        runner.wait_ready()
        assert runner.agent.model_ref == ("tiny-vib", "1.0.0")
        old = make_bundle(tiny_zoo, tmp_path / "old", signing_key, version="0.9.0")
        sha, size = pack(VerifiedBundle(old.path, read_manifest(old.path), ""), www / "old.tar.gz")
        topic = topics.command("default", "down-1", "assign-model")

        def assign(cid: str, rollback: bool) -> tuple[str, str | None]:
            cmd = AssignModel(
                device_id="cloud", boot_id="cloud", seq=1, sent_at=time.time(), command_id=cid,
                model="tiny-vib", version="0.9.0", url=server.url("old.tar.gz"), sha256=sha,
                size=size, rollback=rollback,
            )  # fmt: skip
            acker.client.publish(topic, sign_command(topic, cmd), qos=1)
            assert acker.wait_for(
                lambda a: any(x.command_id == cid and x.status != "received" for x in a.acks), 30
            )
            ack = next(x for x in acker.acks if x.command_id == cid and x.status != "received")
            return ack.status, ack.reason

        assert assign("d-1", rollback=False) == ("refused", "downgrade")
        assert runner.agent.model_ref == ("tiny-vib", "1.0.0")
        assert assign("d-2", rollback=True) == ("succeeded", None)
        assert runner.agent.model_ref == ("tiny-vib", "0.9.0")
    finally:
        runner.stop()
        acker.close()
        server.close()
