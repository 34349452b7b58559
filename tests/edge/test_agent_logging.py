"""What a running agent tells its operator at the default level, and nothing per reading."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.commit_acker import CommitAcker
from support.edge_agent import AgentProcess, AgentThread, agent_toml, make_config
from support.edge_http import RangeServer
from support.tiny_models import TinyZoo, make_bundle, pack

from edgefleet.edge.outbox import Outbox, Row
from edgefleet.edge.uplink import BacklogMonitor
from edgefleet.protocol import topics
from edgefleet.protocol.bundle import VerifiedBundle, read_manifest
from edgefleet.protocol.codec import encode
from edgefleet.protocol.messages import AssignModel, CommitRange

EDGE = "edgefleet.edge"


def _lines(caplog: pytest.LogCaptureFixture, level: int = logging.INFO) -> list[str]:
    return [
        r.getMessage()
        for r in list(caplog.records)
        if r.name.startswith(EDGE) and r.levelno >= level
    ]


def _wait_line(
    caplog: pytest.LogCaptureFixture,
    pred: Callable[[str], bool],
    timeout: float = 20,
    level: int = logging.INFO,
) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in _lines(caplog, level):
            if pred(line):
                return line
        time.sleep(0.05)
    raise AssertionError(f"no such log line; got: {_lines(caplog)}")


@pytest.mark.slow(seconds=12)
def test_connect_model_serving_and_disconnect_are_logged(
    mosquitto_factory, tmp_path, good_bundle, trusted_pub, caplog
):
    caplog.set_level(logging.INFO, logger="edgefleet")
    broker = mosquitto_factory()
    url = f"mqtt://127.0.0.1:{broker.port}"
    runner = AgentThread(
        make_config(
            agent_toml(
                tmp_path / "d", broker.port, device="log-1", bundle=good_bundle, keys=[trusted_pub]
            )
        )
    )
    try:
        runner.wait_ready()
        _wait_line(caplog, lambda s: s.startswith(f"log-1: connected to {url} (CONNACK Success"))
        loaded = _wait_line(caplog, lambda s: "model loaded" in s)
        assert "tiny-vib version 1.0.0 on the litert runtime" in loaded, loaded
        assert str(good_bundle) in loaded
        serving = _wait_line(caplog, lambda s: "serving tiny-vib@1.0.0" in s)
        assert "simulated source" in serving, serving
        assert "400 Hz" in serving, serving
        assert "windows of 32 samples" in serving, serving

        # Serving for a while adds no line: nothing per reading or per window at info.
        before = len(_lines(caplog))
        n = runner.agent.latency.total
        time.sleep(1.5)
        assert runner.agent.latency.total > n + 10  # it did infer meanwhile
        assert _lines(caplog)[before:] == []

        broker.kill()
        lost = _wait_line(
            caplog, lambda s: s.startswith(f"log-1: disconnected from {url}"), level=logging.WARNING
        )
        assert "connection lost" in lost, lost
        _wait_line(
            caplog,
            lambda s: s.startswith(f"log-1: cannot reach the broker at {url}"),
            level=logging.WARNING,
        )
        broker.restart()
        back = _wait_line(caplog, lambda s: "connected to" in s and "failed attempts" in s)
        assert url in back, back
    finally:
        runner.stop()
    _wait_line(caplog, lambda s: s == f"log-1: disconnected from {url} (shutdown)")


@pytest.mark.slow(seconds=15)
def test_agent_run_logs_at_its_default_level(mosquitto, tmp_path, good_bundle, trusted_pub):
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        agent_toml(
            tmp_path / "d", mosquitto.port, device="log-cli", bundle=good_bundle, keys=[trusted_pub]
        )
    )
    log_file = tmp_path / "agent.log"
    proc = AgentProcess(cfg, log_file)
    try:
        deadline = time.monotonic() + 60
        while "serving tiny-vib@1.0.0" not in log_file.read_text():
            assert proc.proc.poll() is None, log_file.read_text()
            assert time.monotonic() < deadline, log_file.read_text()
            time.sleep(0.1)
        time.sleep(0.5)
    finally:
        assert proc.terminate() == 0
    text = log_file.read_text()
    assert (
        f"INFO edgefleet.edge.transport.mqtt: log-cli: connected to mqtt://127.0.0.1:{mosquitto.port}"
        in text
    )
    assert "model loaded: tiny-vib version 1.0.0 on the litert runtime" in text
    assert f"log-cli: disconnected from mqtt://127.0.0.1:{mosquitto.port} (shutdown)" in text


@pytest.mark.slow(seconds=15)
def test_outbox_backlog_warnings_are_rate_limited(
    mosquitto, tmp_path, good_bundle, trusted_pub, caplog
):
    caplog.set_level(logging.INFO, logger="edgefleet")
    # No ingest commits anything: the outbox only fills.
    runner = AgentThread(
        make_config(
            agent_toml(
                tmp_path / "d",
                mosquitto.port,
                device="log-box",
                bundle=good_bundle,
                keys=[trusted_pub],
                extra="[outbox]\nmax_records = 60\n",
            )
        )
    )
    acker = None
    try:
        runner.wait_ready()
        warn = logging.WARNING
        half = _wait_line(caplog, lambda s: "log-box: outbox at" in s, level=warn)
        assert "of 60 records" in half, half
        assert "waiting for the cloud's commit" in half, half
        _wait_line(
            caplog,
            lambda s: "log-box: outbox at 9" in s or "log-box: outbox at 100%" in s,
            level=warn,
        )
        dropped = _wait_line(caplog, lambda s: "log-box: outbox full: dropped" in s, level=warn)
        assert "raise outbox.max_records" in dropped, dropped
        # The outbox stays full and drops at every flush (20 a second), but says so once a minute.
        drops = runner.agent.uplink.drops
        time.sleep(2.0)
        assert runner.agent.uplink.drops > drops + 5
        assert sum("outbox full" in s for s in _lines(caplog, warn)) == 1
        assert sum("outbox at" in s for s in _lines(caplog, warn)) == 2
        # An ingest comes back and commits: the outbox drains, and says so once.
        acker = CommitAcker(mosquitto.host, mosquitto.port)
        _wait_line(caplog, lambda s: "log-box: outbox drained to" in s)
    finally:
        runner.stop()
        if acker is not None:
            acker.close()


def _unchecked(path: Path) -> VerifiedBundle:
    return VerifiedBundle(path, read_manifest(path), "")


def _assign(acker: CommitAcker, device: str, cid: str, url: str, sha: str, size: int) -> None:
    cmd = AssignModel(
        device_id="cloud",
        boot_id="cloud",
        seq=1,
        sent_at=time.time(),
        command_id=cid,
        model="tiny-vib",
        version="2.0.0",
        url=url,
        sha256=sha,
        size=size,
    )
    acker.client.publish(topics.command("default", device, "assign-model"), encode(cmd), qos=1)


@pytest.mark.slow(seconds=15)
def test_model_refusal_and_swap_are_logged_with_reasons(
    mosquitto,
    tmp_path,
    tiny_zoo: TinyZoo,
    signing_key: Ed25519PrivateKey,
    trusted_pub,
    good_bundle,
    caplog,
):
    caplog.set_level(logging.INFO, logger="edgefleet")
    www = tmp_path / "www"
    www.mkdir()
    server = RangeServer(www)
    acker = CommitAcker(mosquitto.host, mosquitto.port)
    dev = "log-swap"
    runner = AgentThread(
        make_config(
            agent_toml(
                tmp_path / "d", mosquitto.port, device=dev, bundle=good_bundle, keys=[trusted_pub]
            )
        )
    )
    try:
        runner.wait_ready()
        # Tampered: model bytes changed after signing.
        bad = make_bundle(tiny_zoo, tmp_path / "tampered", signing_key, version="2.0.0")
        data = bytearray((bad.path / "model.tflite").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (bad.path / "model.tflite").write_bytes(bytes(data))
        sha, size = pack(_unchecked(bad.path), www / "bad.tar.gz")
        _assign(acker, dev, "c-bad", server.url("bad.tar.gz"), sha, size)
        refused = _wait_line(
            caplog, lambda s: f"{dev}: refused model tiny-vib@2.0.0" in s, level=logging.WARNING
        )
        assert "(command c-bad): hash-mismatch:" in refused, refused
        assert refused.endswith("still serving tiny-vib@1.0.0"), refused

        good = make_bundle(tiny_zoo, tmp_path / "v2", signing_key, version="2.0.0")
        sha, size = pack(good, www / "good.tar.gz")
        _assign(acker, dev, "c-good", server.url("good.tar.gz"), sha, size)
        swapped = _wait_line(caplog, lambda s: f"{dev}: model swapped" in s)
        assert swapped == (
            f"{dev}: model swapped: tiny-vib@1.0.0 -> tiny-vib@2.0.0 on the litert runtime "
            "(command c-good)"
        ), swapped
    finally:
        runner.stop()
        acker.close()
        server.close()


def _rows(boot: str, first: int, n: int) -> list[Row]:
    return [
        Row(boot, s, "inference", "t", "m@1", False, b"x" * 10) for s in range(first, first + n)
    ]


def test_backlog_hovering_at_a_level_logs_it_once(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="edgefleet")
    box = Outbox(tmp_path / "o.sqlite", max_records=100)
    box.register_boot("b")
    now = [0.0]
    monitor = BacklogMonitor("dev-h", box.drops, drop_every_s=60, clock=lambda: now[0])
    seq = 1
    box.append(_rows("b", seq, 55))
    seq += 55
    monitor.observe(box)
    # 55% -> 45% -> 55% ... : within the hysteresis band, so no new line each time.
    for _ in range(5):
        box.commit([CommitRange("b", seq - 10, seq - 1)])
        monitor.observe(box)
        box.append(_rows("b", seq, 10))
        seq += 10
        monitor.observe(box)
    assert [s for s in _lines(caplog) if "outbox" in s] == [
        "dev-h: outbox at 55% of its cap (55 of 100 records, 0.0 of 64.0 MiB) waiting for the "
        "cloud's commit; past the cap the oldest records are dropped"
    ]
    # Full: the first drop is said at once, the next ones a minute later, with their count.
    box.append(_rows("b", seq, 60))
    seq += 60
    monitor.observe(box)
    for _ in range(3):
        now[0] += 10
        box.append(_rows("b", seq, 5))
        seq += 5
        monitor.observe(box)
    now[0] += 31
    box.append(_rows("b", seq, 5))
    monitor.observe(box)
    lines = [s for s in _lines(caplog) if "outbox full" in s]
    assert len(lines) == 2, lines
    assert lines[0].startswith("dev-h: outbox full: dropped the 15 oldest records (15 since")
    assert lines[1].startswith(
        "dev-h: outbox full: dropped the 20 oldest records in the last 61 s (35 since"
    )
    assert sum("outbox at" in s for s in _lines(caplog)) == 2  # 55%, then 100%
    box.close()
