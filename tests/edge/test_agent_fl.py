"""The agent's federated-learning side without a SuperLink: buffer rows, refusals, a deadline."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from pathlib import Path

import psutil
import pytest
from support.commit_acker import CommitAcker
from support.edge_agent import AgentThread, agent_toml, make_config
from support.tiny_models import CHANNELS, WINDOW

from edgefleet.edge.fl.buffer import TrainingBuffer
from edgefleet.edge.fl.errors import FlConfigError, NoTrainingData
from edgefleet.protocol import topics
from edgefleet.protocol.codec import encode
from edgefleet.protocol.messages import CommandAck, StartTraining

MODEL = "tiny-vib"


def _fl(**keys: object) -> str:
    lines = ["[fl]", "enabled = true", "max_cpu_percent = 0.0"]  # the shared machine is busy
    for k, v in keys.items():
        lines.append(f"{k} = {v!r}".replace("'", '"'))
    return "\n".join(lines) + "\n"


def _agent(tmp_path: Path, port: int, device: str, bundle: Path, pub: Path, fl: str) -> AgentThread:
    text = agent_toml(tmp_path / device, port, device=device, bundle=bundle, keys=[pub], extra=fl)
    runner = AgentThread(make_config(text))
    runner.wait_ready()
    return runner


def _start(acker: CommitAcker, device: str, cid: str, **kw: object) -> None:
    fields: dict[str, object] = {"model": MODEL, "superlink": "127.0.0.1:9"}
    fields.update(kw)
    cmd = StartTraining(
        device_id="cloud", boot_id="cloud", seq=1, sent_at=time.time(), command_id=cid, **fields
    )  # type: ignore[arg-type]
    acker.client.publish(topics.command("default", device, "start-training"), encode(cmd), qos=1)


def _final(acker: CommitAcker, cid: str, timeout: float = 30) -> CommandAck:
    def done(a: CommitAcker) -> bool:
        return any(x.command_id == cid and x.status != "received" for x in a.acks)

    assert acker.wait_for(done, timeout), f"no final ack for {cid}"
    return next(x for x in acker.acks if x.command_id == cid and x.status != "received")


def _window_excluding_now() -> str:
    start = datetime.now() + timedelta(hours=2)
    end = start + timedelta(hours=1)
    return f"{start:%H:%M}-{end:%H:%M}"


def _wait_buffered(db: Path, n: int = 1) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            if len(TrainingBuffer(db).load(MODEL, WINDOW * len(CHANNELS))) >= n:
                return
        except NoTrainingData:
            pass
        assert time.monotonic() < deadline, "the agent buffered no training samples"
        time.sleep(0.1)


@pytest.fixture
def acker(mosquitto):
    a = CommitAcker(mosquitto.host, mosquitto.port)
    yield a
    a.close()


def test_fl_config_errors_are_typed():
    with pytest.raises(FlConfigError, match="auth key"):
        make_config(agent_toml(Path("/tmp/x"), 1883, extra=_fl(auth_private_key="k")))
    with pytest.raises(FlConfigError, match="HH:MM"):
        make_config(agent_toml(Path("/tmp/x"), 1883, extra=_fl(window="soon")))
    with pytest.raises(Exception, match="unknown key"):
        make_config(agent_toml(Path("/tmp/x"), 1883, extra=_fl(colour="red")))


def test_buffer_rows_are_what_the_client_app_reads(
    mosquitto, acker, tmp_path, good_bundle, trusted_pub
):
    runner = _agent(
        tmp_path, mosquitto.port, "fl-buf", good_bundle, trusted_pub, _fl(sample_every_windows=2)
    )
    db = runner.agent.cfg.outbox_path
    try:
        _wait_buffered(db, 5)
    finally:
        runner.stop()
    got = TrainingBuffer(db).load(MODEL, WINDOW * len(CHANNELS))
    # Keyed by the model's name (not name@version), little-endian float32, nothing skipped.
    assert got.skipped == 0
    assert got.x.shape[1] == WINDOW * len(CHANNELS)
    assert got.x.dtype.name == "float32"


def test_a_disabled_agent_buffers_nothing_and_refuses(
    mosquitto, acker, tmp_path, good_bundle, trusted_pub
):
    runner = _agent(tmp_path, mosquitto.port, "fl-off", good_bundle, trusted_pub, "")
    try:
        _start(acker, "fl-off", "t-off")
        ack = _final(acker, "t-off")
        assert (ack.status, ack.reason) == ("refused", "fl-disabled")
        assert runner.agent.fl is None
    finally:
        runner.stop()


@pytest.mark.slow
def test_refusals_name_their_reason_and_a_session_ends_at_its_deadline(
    mosquitto, acker, tmp_path, good_bundle, trusted_pub
):
    port = mosquitto.port
    runners = {
        "fl-win": _agent(
            tmp_path, port, "fl-win", good_bundle, trusted_pub, _fl(window=_window_excluding_now())
        ),
        "fl-few": _agent(
            tmp_path, port, "fl-few", good_bundle, trusted_pub, _fl(min_samples=10**6)
        ),
        "fl-ok": _agent(
            tmp_path, port, "fl-ok", good_bundle, trusted_pub, _fl(sample_every_windows=1)
        ),
    }
    try:
        _start(acker, "fl-win", "t-win")
        _start(acker, "fl-few", "t-few")
        _start(acker, "fl-ok", "t-wrong", model="kws")
        assert (_final(acker, "t-win").reason, _final(acker, "t-few").reason) == (
            "training-refused",
            "no-training-data",
        )
        assert "outside the training window" in (_final(acker, "t-win").detail or "")
        assert _final(acker, "t-wrong").reason == "wrong-model"

        # A SuperNode dialling nobody: the session holds the device, then ends at its deadline.
        ok = runners["fl-ok"].agent
        _wait_buffered(ok.cfg.outbox_path)
        _start(acker, "fl-ok", "t-run", deadline_s=6.0, rounds=2)
        assert acker.wait_for(lambda a: any(x.command_id == "t-run" for x in a.acks))
        first = next(x for x in acker.acks if x.command_id == "t-run")
        assert first.status == "received", first
        deadline = time.monotonic() + 20
        while ok.fl is None or ok.fl.supervisor is None or ok.fl.supervisor.pid is None:
            assert time.monotonic() < deadline, "no SuperNode started"
            time.sleep(0.05)
        pid = ok.fl.supervisor.pid
        _start(acker, "fl-ok", "t-busy")
        assert _final(acker, "t-busy").reason == "busy"
        ack = _final(acker, "t-run", timeout=40)
        assert (ack.status, ack.reason) == ("failed", "deadline")
        assert ack.data["rounds_trained"] == 0
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    finally:
        for r in runners.values():
            r.stop()


@pytest.mark.slow
def test_crash_kills_the_supernode_process_group(
    mosquitto, acker, tmp_path, good_bundle, trusted_pub
):
    runner = _agent(
        tmp_path, mosquitto.port, "fl-crash", good_bundle, trusted_pub, _fl(sample_every_windows=1)
    )
    agent = runner.agent
    _wait_buffered(agent.cfg.outbox_path)
    _start(acker, "fl-crash", "t-crash", deadline_s=120.0)
    deadline = time.monotonic() + 30
    while agent.fl is None or agent.fl.supervisor is None or agent.fl.supervisor.pid is None:
        assert time.monotonic() < deadline, "no SuperNode started"
        time.sleep(0.05)
    pid = agent.fl.supervisor.pid
    group = [pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))]
    runner.crash()
    deadline = time.monotonic() + 15
    while any(
        psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in group
    ):
        assert time.monotonic() < deadline, "the SuperNode outlived the crashed agent"
        time.sleep(0.05)
