"""The agent side without Flower: buffer reader, policy, settings, local task, supervisor."""

from __future__ import annotations

import logging
import sqlite3
import sys
import time
from datetime import datetime

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
from edgefleet.edge.fl.policy import TrainingPolicy, refusal
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


def test_supervisor_restarts_with_backoff_and_stops(caplog):
    script = "import sys; print('\\x1b[92mINFO\\x1b[0m hello', flush=True); sys.exit(3)"
    sup = SuperNodeSupervisor(
        [sys.executable, "-c", script],
        logging.getLogger("test.sup"),
        restart_min_s=0.05,
        restart_max_s=0.2,
    )
    with caplog.at_level(logging.INFO, logger="test.sup"):
        sup.start()
        deadline = time.monotonic() + 20
        while sup.restarts < 3:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        sup.stop()
    assert "supernode: INFO hello" in caplog.text  # colour codes stripped
    assert "exited with status 3" in caplog.text
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
