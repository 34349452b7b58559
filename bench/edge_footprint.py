"""RSS of a running agent (LiteRT, loaded model, open outbox, live MQTT) and cold start time.

Starts its own Mosquitto, builds the tiny int8 model bundle (TensorFlow runs in this process
only, never in the agent's), then launches the agent as a subprocess the way a device runs it:
the lean launcher ``python -m edgefleet.edge`` (what ``edgefleet agent run`` execs, and what the
``edgefleet-agent`` script runs), which verifies bundles in a child process. For comparison, in
the same run, the agent inside the full CLI process (``edgefleet agent run --in-process`` with
``model.verify = "process"``): the way it ran before. Cold start is spawn to the first inference
result arriving at a subscriber; RSS is read from /proc after warm-up, with the model loaded,
inference running and the MQTT connection live. The raw baseline is a bare Python + numpy +
LiteRT interpreter process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from _common import emit
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.tiny_models import build_zoo, make_bundle  # type: ignore[import-not-found]

from edgefleet.cloud.broker import MosquittoBroker
from edgefleet.protocol import topics

WARMUP_S = 5.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def baseline_rss(model: Path) -> float:
    code = (
        "import numpy, sys, time\n"
        "from ai_edge_litert.interpreter import Interpreter\n"
        f"i = Interpreter(model_path={str(model)!r}); i.allocate_tensors(); i.invoke()\n"
        "print('ready', flush=True); time.sleep(30)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    p.stdout.readline()
    r = rss_mb(p.pid)
    p.kill()
    p.wait()
    return r


def run_agent(cmd: list[str], first: threading.Event) -> tuple[float, float, int]:
    """Start the agent with ``cmd``; (RSS MB after warm-up, cold start s, threads)."""
    first.clear()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        assert first.wait(60), "no result from the agent"
        cold = time.perf_counter() - t0
        time.sleep(WARMUP_S)
        assert proc.poll() is None, "the agent died"
        rss = rss_mb(proc.pid)
        threads = len(list(Path(f"/proc/{proc.pid}/task").iterdir()))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    return rss, cold, threads


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="edgefleet-footprint-"))
    zoo = build_zoo(work / "zoo")
    key = Ed25519PrivateKey.generate()
    bundle = make_bundle(zoo, work / "bundle", key, fmt="int8")
    pub = work / "fleet.pub"
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    broker = MosquittoBroker(work / "broker").start()
    first = threading.Event()
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="footprint-sub")
    subscribed = threading.Event()
    sub.on_subscribe = lambda *_a: subscribed.set()
    sub.on_message = lambda *_a: first.set()
    sub.connect(broker.host, broker.port)
    sub.loop_start()
    sub.subscribe(topics.telemetry("default", "fp-1", "inference"), qos=1)
    assert subscribed.wait(10)

    def config(name: str, verify: str) -> Path:
        # One data dir per run: a fresh outbox, so a replay cannot pass for a first result.
        cfg = work / f"{name}.toml"
        cfg.write_text(f"""
[device]
id = "fp-1"
data_dir = "{work / name}"
[mqtt]
port = {broker.port}
[source]
kind = "simulated"
seed = 1
chunk = 32
[model]
bundle = "{bundle.path}"
trusted_keys = ["{pub}"]
verify = "{verify}"
[uplink]
flush_interval_s = 0.05
[health]
interval_s = 1.0
""")
        return cfg

    exe = Path(sys.executable).parent / "edgefleet"
    lean = [sys.executable, "-m", "edgefleet.edge", "--config", str(config("lean", "auto"))]
    cli = [str(exe), "agent", "run", "--in-process", "--config", str(config("cli", "process"))]
    try:
        rss, cold, threads = run_agent(lean, first)
        rss_cli, cold_cli, threads_cli = run_agent(cli, first)
    finally:
        sub.loop_stop()
        broker.stop()
    base = baseline_rss(bundle.model_path)
    emit(
        "edge_footprint",
        {
            "rss_mb": round(rss, 1),
            "cold_start_s": round(cold, 3),
            "threads": threads,
            "rss_mb_cli_in_process": round(rss_cli, 1),
            "cold_start_s_cli_in_process": round(cold_cli, 3),
            "threads_cli_in_process": threads_cli,
            "baseline_python_numpy_litert_rss_mb": round(base, 1),
            "agent_over_baseline_mb": round(rss - base, 1),
        },
        ("ai-edge-litert", "paho-mqtt", "numpy"),
    )


if __name__ == "__main__":
    main()
