"""Federated rounds: seconds per round on loopback SuperNodes and in simulation, edge training RSS.

Usage: .venv/bin/python bench/fl_round.py [--deploy 3,10,30] [--sim 100,300]
Compares, in the same run, a LiteRT training step (what the device runs) against the same
step in Keras/TensorFlow, and federated against centralised training of the digits MLP.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _common import emit

# ru_maxrss survives execve on Linux (a child would report the parent's peak): VmHWM does not.
PEAK = """
def peak_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
"""
STEP_LITERT = (
    PEAK
    + """
import sys, time, json, numpy as np
from edgefleet.edge.fl.trainer import LiteRTTrainer
t = LiteRTTrainer(open(sys.argv[1], "rb").read())
x = np.random.default_rng(0).normal(size=(320, 192)).astype(np.float32)
t.fit(x, epochs=1)
s = time.perf_counter(); t.fit(x, epochs=10); dt = (time.perf_counter() - s) / 10
rss = peak_mb()
print(json.dumps({"epoch_s": dt, "rss_mb": rss, "tf": "tensorflow" in sys.modules}))
"""
)
STEP_TF = (
    PEAK
    + """
import os, sys, time, json, numpy as np
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
from edgefleet.models.zoo import get_model
import keras
m = get_model("vibration-anomaly").build(0)
m.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
x = np.random.default_rng(0).normal(size=(320, 192)).astype(np.float32)
m.fit(x, x, batch_size=32, epochs=1, verbose=0)
s = time.perf_counter(); m.fit(x, x, batch_size=32, epochs=10, verbose=0)
dt = (time.perf_counter() - s) / 10
rss = peak_mb()
print(json.dumps({"epoch_s": dt, "rss_mb": rss}))
"""
)


def _run(script: str, *args: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _tree_rss_mb(pid: int) -> float:
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
        return float(sum(p.memory_info().rss for p in procs if p.is_running())) / 2**20
    except psutil.NoSuchProcess:
        return 0.0


def deploy(n: int, rounds: int, tmp: Path) -> dict[str, float]:
    from support.fl_fleet import (  # type: ignore[import-not-found]
        Fleet,
        fill_agent_db,
        vibration_windows,
    )

    from edgefleet.cloud.fl.apps.outcome import run_on_superlink
    from edgefleet.cloud.fl.apps.prepare import prepare_run
    from edgefleet.cloud.fl.settings import RunSettings
    from edgefleet.cloud.fl.superlink.process import SuperLink

    # A fleet does not wait for its last device: with 30 SuperNodes on 2 cores a reply or two
    # can miss the deadline (Flower's object push expires under load). 90% is the quorum.
    s = RunSettings(
        model="vibration-anomaly",
        rounds=rounds,
        min_clients=max(2, math.ceil(0.9 * n)),
        workdir=str(tmp / f"run{n}"),
        round_timeout_s=300,
        quorum_timeout_s=300,
    )
    prepare_run(s)
    fleet = Fleet(SuperLink(tmp / f"link{n}").start())
    try:
        for i in range(n):
            db = fill_agent_db(tmp / f"a{n}-{i}.db", s.model, vibration_windows(i, 100))
            fleet.add_node(db, f"n{i}")
        time.sleep(5)  # let every SuperNode settle to idle before measuring memory
        idle = [_tree_rss_mb(sup.pid or 0) for sup in fleet.supervisors]
        out = run_on_superlink(s, fleet.link, timeout=900)
    finally:
        fleet.stop()
    secs = [r["seconds"] for r in out.rounds]
    train = [r["train_seconds_max"] for r in out.rounds]
    return {
        f"round_s_deploy_{n}": float(np.median(secs)),
        # The slowest client's training bounds the round: the rest is Flower's overhead.
        f"round_train_s_deploy_{n}": float(np.median(train)),
        f"round_overhead_s_deploy_{n}": float(np.median(np.subtract(secs, train))),
        f"idle_supernode_rss_mb_deploy_{n}": float(np.mean(idle)),
        f"fleet_rss_gb_deploy_{n}": float(np.sum(idle) / 1024),
        f"replies_min_deploy_{n}": float(min(r["replies"] for r in out.rounds)),
    }


def simulate(clients: int, rounds: int, tmp: Path) -> tuple[dict[str, float], list[float]]:
    from edgefleet.cloud.fl.apps.prepare import prepare_run, write_partitions
    from edgefleet.cloud.fl.apps.simulation import simulate as sim
    from edgefleet.cloud.fl.settings import RunSettings

    s = RunSettings(
        model="digits",
        rounds=rounds,
        min_clients=clients,
        epochs=2,
        lr=0.1,
        workdir=str(tmp / f"sim{clients}"),
        data_dir=str(tmp / f"data{clients}"),
    )
    prep = prepare_run(s)
    write_partitions(Path(s.data_dir), "digits", prep.data, clients, alpha=0.5, seed=0)
    start = time.perf_counter()
    out = sim(s, clients)
    total = time.perf_counter() - start
    secs = [r["seconds"] for r in out.rounds]
    curve = [r["holdout"].get("accuracy", 0.0) for r in out.rounds]
    # The first round includes Ray's start; the median of the rest is the steady state.
    return {
        f"round_s_sim_{clients}": float(np.median(secs[1:] or secs)),
        f"sim_total_s_{clients}": total,
    }, curve


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--deploy", default="3,10,30")
    parser.add_argument("--sim", default="100,300")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    # A Control API call retried on a loaded machine is worth seeing (on stderr).
    logging.getLogger("edgefleet.cloud.fl.superlink.process").setLevel(logging.WARNING)
    from support.fl_models import build  # type: ignore[import-not-found]

    metrics: dict[str, float | list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-fl-") as tmpdir:
        tmp = Path(tmpdir)
        model = tmp / "vib.tflite"
        model.write_bytes(build("vibration-anomaly").tflite)
        lite, tf = _run(STEP_LITERT, str(model)), _run(STEP_TF)
        if lite["tf"]:
            raise SystemExit("the LiteRT step imported TensorFlow")
        metrics |= {
            "edge_train_rss_mb_litert": lite["rss_mb"],
            "edge_train_rss_mb_tf": tf["rss_mb"],
            "edge_epoch_s_litert": lite["epoch_s"],
            "edge_epoch_s_tf": tf["epoch_s"],
        }
        for n in [int(v) for v in args.deploy.split(",") if v]:
            metrics |= deploy(n, args.rounds, tmp)
        sim_metrics, curve = simulate(10, 20, tmp)
        from edgefleet.edge.fl.trainer import LiteRTTrainer
        from edgefleet.models.zoo import get_model

        s = json.loads((tmp / "sim10" / "settings.json").read_text())
        data = get_model("digits").dataset(0, small=True)
        central = LiteRTTrainer((tmp / "sim10" / "trainable.tflite").read_bytes())
        with np.load(tmp / "sim10" / "initial.npz") as init:
            central.set_weights([init[f"arr_{i}"] for i in range(len(init.files))])
        central.fit(data.x_train, data.y_train, epochs=20 * s["epochs"], lr=s["lr"])
        central_acc = float((central.predict(data.x_test).argmax(1) == data.y_test).mean())
        metrics |= sim_metrics | {
            "fedavg_over_central_digits": max(curve) / central_acc,
            "digits_central_accuracy": central_acc,
            "digits_fedavg_curve": [round(a, 4) for a in curve],
        }
        for c in [int(v) for v in args.sim.split(",") if v]:
            metrics |= simulate(c, 3, tmp)[0]
    os.environ.pop("FLWR_HOME", None)
    emit("fl_round", metrics, ("flwr", "ai-edge-litert", "tensorflow", "ray"))


if __name__ == "__main__":
    main()
