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
CPU_WINDOW_S = 10.0
ROOT = Path(__file__).resolve().parents[1]
INSTALL_CACHE = Path.home() / ".cache" / "edgefleet-bench" / "edge-venv"


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_percent(pid: int, seconds: float = CPU_WINDOW_S) -> float:
    """The process's CPU use over the next ``seconds``, in percent of one core."""
    c0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return 100 * (cpu_seconds(pid) - c0) / (time.monotonic() - t0)


def idle_cpu(cmd: list[str]) -> float:
    """CPU % of an agent with no model: connected, health reports at the default interval."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        time.sleep(WARMUP_S)
        assert proc.poll() is None, "the agent died"
        return cpu_percent(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)


def install_mb() -> float:
    """Size of a fresh venv with ``pip install ".[edge]"`` of this checkout (PyPI wheels)."""
    import shutil

    venv = INSTALL_CACHE
    if venv.exists():
        shutil.rmtree(venv)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--disable-pip-version-check", f"{ROOT}[edge]"], check=True)
    total = sum(f.lstat().st_size for f in venv.rglob("*") if f.is_file() and not f.is_symlink())
    return total / 2**20


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


def run_agent(cmd: list[str], first: threading.Event) -> tuple[float, float, int, float]:
    """Start the agent with ``cmd``; (RSS MB after warm-up, cold start s, threads, CPU %)."""
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
        cpu = cpu_percent(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    return rss, cold, threads, cpu


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

    def config(name: str, verify: str, model: bool = True) -> Path:
        # One data dir per run: a fresh outbox, so a replay cannot pass for a first result.
        cfg = work / f"{name}.toml"
        tuning = "[uplink]\nflush_interval_s = 0.05\n[health]\ninterval_s = 1.0"
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
{f'bundle = "{bundle.path}"' if model else ""}
trusted_keys = ["{pub}"]
verify = "{verify}"
{tuning if model else ""}
""")
        return cfg

    exe = Path(sys.executable).parent / "edgefleet"
    lean = [sys.executable, "-m", "edgefleet.edge", "--config", str(config("lean", "auto"))]
    cli = [str(exe), "agent", "run", "--in-process", "--config", str(config("cli", "process"))]
    try:
        rss, cold, threads, serving_cpu = run_agent(lean, first)
        rss_cli, cold_cli, threads_cli, _ = run_agent(cli, first)
        idle = [sys.executable, "-m", "edgefleet.edge", "--config"]
        idle_cpu_pct = idle_cpu([*idle, str(config("idle", "auto", model=False))])
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
            # No model, default intervals: what the agent costs while it has nothing to do.
            "idle_cpu_percent": round(idle_cpu_pct, 2),
            # Serving the tiny int8 model at 400 Hz (windows of 32, results flushed at 20 Hz).
            "serving_cpu_percent": round(serving_cpu, 2),
            "install_mb": round(install_mb(), 1),
        },
        ("ai-edge-litert", "paho-mqtt", "numpy"),
    )


if __name__ == "__main__":
    main()
