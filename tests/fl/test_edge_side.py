"""The agent side without Flower: buffer reader, policy, settings, local task, supervisor."""

from __future__ import annotations

import logging
import re
import sqlite3
import sys
import time
from datetime import datetime

import msgspec
import numpy as np
import pytest
from support.fl_fleet import fill_agent_db

from edgefleet.edge.fl.buffer import TrainingBuffer, encode_sample
from edgefleet.edge.fl.config import FlConfig, free_port, supernode_command
from edgefleet.edge.fl.errors import (
    BadUpdate,
    FlConfigError,
    NoTrainingData,
    SuperNodeError,
    TrainingRefused,
)
from edgefleet.edge.fl.local import TrainTask, check_update, database_path, train_locally
from edgefleet.edge.fl.policy import TrainingPolicy, refusal, yielder
from edgefleet.edge.fl.supervisor import SuperNodeSupervisor


class FixedProbe:
    """A probe at our own seam reporting fixed readings."""

    def __init__(self, cpu: float = 10.0, temp: float | None = 40.0) -> None:
        self.cpu, self.temp = cpu, temp

    def cpu_percent(self) -> float:
        return self.cpu

    def temperature_c(self) -> float | None:
        return self.temp


def test_buffer_reads_agent_rows_and_skips_malformed(tmp_path):
    x = np.arange(20, dtype=np.float32).reshape(5, 4)
    db = fill_agent_db(tmp_path / "a.db", "m", x, np.arange(5))
    con = sqlite3.connect(db)
    con.execute("INSERT INTO training_samples (t, model, x, y) VALUES (9, 'm', x'0102', NULL)")
    con.execute(
        "INSERT INTO training_samples (t, model, x, y) VALUES (10, 'm', ?, NULL)",
        (encode_sample(np.zeros(4, np.float32))[0],),
    )
    con.commit()
    con.close()
    got = TrainingBuffer(db).load("m", 4)
    assert got.skipped == 1
    np.testing.assert_array_equal(got.x[:5], x)
    assert got.y is None  # one row had no label, so the set is unlabelled...
    labelled = TrainingBuffer(db).load("m", 4, labelled=True)
    np.testing.assert_array_equal(labelled.y, np.arange(5))
    assert labelled.skipped == 2  # ...unless only labelled rows count
    with pytest.raises(NoTrainingData, match="no usable"):
        TrainingBuffer(db).load("other-model", 4)
    with pytest.raises(NoTrainingData, match="no agent database"):
        TrainingBuffer(tmp_path / "missing.db").load("m", 4)
    assert encode_sample(x[0], 3)[1] == np.array([3], "<i8").tobytes()


def test_policy_window_cpu_and_temperature():
    night = TrainingPolicy(window="22:00-06:00")
    assert night.in_window(datetime(2024, 1, 1, 23, 0))
    assert night.in_window(datetime(2024, 1, 1, 5, 59))
    assert not night.in_window(datetime(2024, 1, 1, 12, 0))
    noon = datetime(2024, 1, 1, 12, 0)
    assert "window" in (refusal(night, FixedProbe(), noon) or "")
    assert "temperature" in (refusal(TrainingPolicy(), FixedProbe(temp=90.0), noon) or "")
    assert "CPU" in (refusal(TrainingPolicy(), FixedProbe(cpu=99.0), noon) or "")
    assert refusal(TrainingPolicy(), FixedProbe(temp=None), noon) is None
    assert TrainingPolicy.from_node_config(night.to_node_config()) == night
    for bad in ("25:00-01:00", "22:00", "ab:cd-01:00"):
        with pytest.raises(FlConfigError):
            TrainingPolicy(window=bad)


def test_fl_config_validation_and_command(tmp_path):
    with pytest.raises(FlConfigError, match="root_certificates"):
        FlConfig(insecure=False)
    with pytest.raises(FlConfigError, match="both"):
        FlConfig(auth_private_key="k")
    cfg = FlConfig(insecure=False, root_certificates="/ca.pem", window="01:00-05:00")
    cmd = supernode_command(cfg, tmp_path / "agent.db")
    assert "--root-certificates" in cmd
    assert "--insecure" not in cmd
    node_config = cmd[cmd.index("--node-config") + 1]
    assert f"db='{tmp_path / 'agent.db'}'" in node_config
    assert "policy-window='01:00-05:00'" in node_config


def test_local_task_refuses_bad_inputs(tmp_path, digits_trainable):
    with pytest.raises(FlConfigError):
        TrainTask.from_config({"model": "digits"})
    with pytest.raises(FlConfigError, match="db"):
        database_path({}, {})
    assert database_path({"partition-id": 3}, {"data-dir": "/d"}).name == "client-3.db"
    with pytest.raises(BadUpdate, match="empty"):
        check_update([])
    task = TrainTask(model="digits", trainable=digits_trainable.tflite)
    nan = [np.full_like(w, np.nan) for w in digits_trainable.weights]
    db = fill_agent_db(tmp_path / "a.db", "digits", np.ones((8, 64), np.float32), np.zeros(8))
    off = TrainingPolicy(max_cpu_percent=0, yield_to_inference=False)
    with pytest.raises(BadUpdate, match="NaN"):
        train_locally(task, nan, db, off, FixedProbe())
    with pytest.raises(TrainingRefused):
        train_locally(task, digits_trainable.weights, db, TrainingPolicy(), FixedProbe(cpu=100))
    new, metrics = train_locally(task, digits_trainable.weights, db, off, FixedProbe())
    assert metrics["num-examples"] == 8
    assert metrics["loss-after"] < metrics["loss-before"]
    assert len(new) == len(digits_trainable.weights)


def _restart_delays(text: str) -> list[float]:
    return [float(m) for m in re.findall(r"restarting the SuperNode in ([0-9.]+) s", text)]


def _crashing(name: str, **kw: float) -> SuperNodeSupervisor:
    script = "import sys; print('\\x1b[92mINFO\\x1b[0m hello', flush=True); sys.exit(3)"
    return SuperNodeSupervisor([sys.executable, "-c", script], logging.getLogger(name), **kw)


def _until_restarts(sup: SuperNodeSupervisor, n: int) -> None:
    sup.start()
    deadline = time.monotonic() + 30
    while sup.restarts < n:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    sup.stop()


def test_supervisor_restarts_with_backoff_and_stops(caplog):
    lo, hi = 0.1, 0.4
    sup = _crashing("test.sup", restart_min_s=lo, restart_max_s=hi)
    with caplog.at_level(logging.INFO, logger="test.sup"):
        _until_restarts(sup, 4)
    assert "supernode: INFO hello" in caplog.text  # colour codes stripped
    assert "exited with status 3" in caplog.text
    # Each crash doubles the wait, up to restart_max_s.
    assert _restart_delays(caplog.text)[:4] == [min(lo * 2**i, hi) for i in range(4)]
    caplog.clear()
    # A child that ran for stable_after_s resets the backoff: every wait is the shortest.
    steady = _crashing("test.sup4", restart_min_s=lo, restart_max_s=hi, stable_after_s=1e-6)
    with caplog.at_level(logging.INFO, logger="test.sup4"):
        _until_restarts(steady, 3)
    assert _restart_delays(caplog.text)[:3] == [lo] * 3
    with pytest.raises(SuperNodeError):
        SuperNodeSupervisor([], logging.getLogger("x"))


def test_supervisor_builds_a_fresh_command_for_every_restart(caplog):
    """A SuperNode whose port was taken must not retry that port for ever."""
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    ports = [taken.getsockname()[1]]

    def command() -> list[str]:
        port = ports[-1] if len(ports) == 1 else free_port()
        ports.append(port)
        # Stands in for the SuperNode: bind the ClientAppIo port, or exit 1 as it does.
        script = (
            "import socket, sys, time; s = socket.socket(); "
            f"s.bind(('127.0.0.1', {port})); print('bound', flush=True); time.sleep(60)"
        )
        return [sys.executable, "-c", script]

    sup = SuperNodeSupervisor(
        command, logging.getLogger("test.sup3"), restart_min_s=0.05, restart_max_s=0.2
    )
    with caplog.at_level(logging.INFO, logger="test.sup3"):
        sup.start()
        deadline = time.monotonic() + 20
        while "supernode: bound" not in caplog.text:
            assert time.monotonic() < deadline, caplog.text
            time.sleep(0.02)
        sup.stop(timeout=5)
    taken.close()
    assert sup.restarts >= 1  # the first child could not bind
    assert "exited with status 1" in caplog.text
    assert len(set(ports[1:])) >= 2  # and the restart ran with another port


def test_supervisor_stop_ends_a_running_child():
    sup = SuperNodeSupervisor(
        [sys.executable, "-c", "import time; time.sleep(60)"], logging.getLogger("test.sup2")
    ).start()
    deadline = time.monotonic() + 10
    while not sup.running:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    pid = sup.pid
    sup.stop(timeout=5)
    assert not sup.running
    assert pid is not None


class ScriptedProbe(FixedProbe):
    """CPU readings from a script (the last one repeats), counting the reads."""

    def __init__(self, cpu: list[float]) -> None:
        super().__init__()
        self.script, self.reads = cpu, 0

    def cpu_percent(self) -> float:
        self.reads += 1
        return self.script[min(self.reads, len(self.script)) - 1]


def test_yielder_pauses_while_the_cpu_is_busy_at_most_max_pause():
    slept: list[float] = []
    busy_then_idle = ScriptedProbe([95.0, 95.0, 95.0, 20.0])
    yielder(TrainingPolicy(max_cpu_percent=80.0), busy_then_idle, slept.append)()
    assert slept == [0.05] * 3  # three busy readings, then the batch runs
    slept.clear()
    yielder(
        TrainingPolicy(max_cpu_percent=80.0, max_pause_s=0.2), ScriptedProbe([99.0]), slept.append
    )()
    assert sum(slept) == pytest.approx(0.2)  # always busy: the pause is bounded
    for off in (TrainingPolicy(yield_to_inference=False), TrainingPolicy(max_cpu_percent=0)):
        slept.clear()
        probe = ScriptedProbe([99.0])
        yielder(off, probe, slept.append)()
        assert (slept, probe.reads) == ([], 0), off


def test_max_pause_is_a_setting_that_reaches_the_client_app(tmp_path):
    cfg = FlConfig(max_pause_s=0.5)
    assert cfg.policy().max_pause_s == 0.5
    node_config = supernode_command(cfg, tmp_path / "agent.db")[-1]
    assert "policy-max-pause=0.5" in node_config
    assert TrainingPolicy.from_node_config(cfg.policy().to_node_config()).max_pause_s == 0.5
    with pytest.raises(msgspec.ValidationError, match="max_pause_s"):
        msgspec.convert({"max_pause_s": -1}, FlConfig)


# Runs train_locally in a child: lower_priority() changes the scheduling of the process that
# calls it, which must not be the test runner.
_CHILD = """
import json, os, sys
import msgspec
import numpy as np
from edgefleet.edge.fl.local import TrainTask, train_locally
from edgefleet.edge.fl.policy import TrainingPolicy

class Probe:
    reads = 0
    def cpu_percent(self):
        self.reads += 1
        return 10.0 if self.reads == 1 else 99.0  # idle at the check, busy while training
    def temperature_c(self):
        return None

tflite, weights, db = sys.argv[1:4]
with np.load(weights) as w:
    start = [w[f"arr_{i}"] for i in range(len(w.files))]
probe = Probe()
policy = TrainingPolicy(max_cpu_percent=80.0, max_pause_s=0.1)
before = (os.sched_getscheduler(0), os.nice(0))
_, metrics = train_locally(
    TrainTask(model="digits", trainable=open(tflite, "rb").read()), start, db, policy, probe
)
print(json.dumps({"before": before, "after": [os.sched_getscheduler(0), os.nice(0)],
                  "reads": probe.reads, "steps": metrics["steps"],
                  "seconds": metrics["train-seconds"]}))
"""


def test_training_drops_to_idle_priority_and_yields_between_batches(tmp_path, digits_trainable):
    import json
    import os
    import subprocess

    (tmp_path / "t.tflite").write_bytes(digits_trainable.tflite)
    np.savez(tmp_path / "w.npz", *digits_trainable.weights)
    db = fill_agent_db(tmp_path / "a.db", "digits", np.ones((70, 64), np.float32), np.zeros(70))
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _CHILD,
            str(tmp_path / "t.tflite"),
            str(tmp_path / "w.npz"),
            str(db),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["before"][0] != os.SCHED_IDLE
    policy, nice = out["after"]
    assert policy == os.SCHED_IDLE or nice == 19
    # 70 rows in batches of 32: 3 steps, each preceded by a busy reading paused up to 0.1 s.
    assert out["steps"] == 3
    assert out["reads"] >= 1 + out["steps"] * 2
    assert out["seconds"] >= out["steps"] * 0.1 * 0.9
