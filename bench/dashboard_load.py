"""Dashboard load: first paint at 100 and 1,000 devices, and what the live view costs ingest.

A real Mosquitto, the in-process cloud with the dashboard mounted, devices published by a
separate process, and Debian's headless Chromium.

First paint is cold: before each load the live feed has stopped and forgotten its snapshot (no
other viewer), and the page gets a fresh browser context (empty cache); the time is the page's
``edgefleet:devices-shown:N`` mark, set once the overview has painted all N devices.

``ingest_cost_of_live_view`` compares ingest throughput (inference rows committed per second,
ingest saturated by a blaster process) with a live viewer of the 1,000-device overview against
the dashboard truly off: no page, no stream, the feed thread stopped (checked: it polls nothing
during an off phase). Ingest never calls into the dashboard, so a stopped feed leaves the same
ingest path as a cloud with ``dashboard=None``. The viewer is a client in its own process
reading the live stream, as a browser on another machine would; ``ingest_cost_of_browser_on_host``
is the same with the page open in Chromium on this machine, whose rendering competes for the
same cores. Phases alternate with off phases and start and end with off; each on phase is
compared with the mean of the off phases on either side, which cancels a slow drift (the
database grows during the run). Other processes on the machine add noise: the load average is
reported with the numbers, and the verdict says "inconclusive" when the noise is too large.
"""

from __future__ import annotations

import os
import secrets
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import psutil
from _common import emit
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.cloud.app import Cloud, CloudConfig
from edgefleet.cloud.broker import MosquittoBroker
from edgefleet.cloud.dashboard import Dashboard, DashboardSettings
from edgefleet.protocol import codec, topics
from edgefleet.protocol.messages import InferenceBatch, InferenceRecord, Status

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        "--disable-dev-shm-usage"]  # fmt: skip
FLEET = "bench"
# Ingest commits in bursts seconds apart on a loaded machine: phases must be long.
PHASE_S = 20.0
# Off phases between on phases of two kinds: "stream", a client in its own process reading the
# live stream of the overview (the viewer's browser on another machine, as deployed), and "page",
# the overview open in Chromium on this machine (its rendering competes for the same cores).
PHASES = ("off", "stream", "off", "page") * 3 + ("off",)
SETTLE_S = 1.0
# The budget: the live view may cost ingest at most this fraction of its throughput.
BUDGET = 0.05


def births(host: str, port: int, ids: list[str]) -> None:
    """Retained online status for each device id, over one connection."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"births-{secrets.token_hex(3)}")
    c.connect(host, port)
    c.loop_start()
    boot = secrets.token_hex(4)
    infos = []
    for i, d in enumerate(ids):
        msg = Status(state="online", reason="start", agent_version=f"0.1.{i % 3}", model="vib",
                     model_version=f"1.{i % 2}.0", device_id=d, boot_id=boot, seq=0,
                     sent_at=time.time())  # fmt: skip
        infos.append(c.publish(topics.status(FLEET, d), codec.encode(msg), qos=1, retain=True))
    for info in infos:
        info.wait_for_publish(30)
    c.disconnect()
    c.loop_stop()


def blast(host: str, port: int, devices: int, seconds: float) -> None:
    """Publish inference batches for ``devices`` devices as fast as the broker takes them.

    Runs for ``seconds`` at most; the benchmark terminates it when the phases are done.
    """
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"blast-{secrets.token_hex(3)}")
    c.max_inflight_messages_set(100)
    c.connect(host, port)
    c.loop_start()
    boot, seq, end = secrets.token_hex(4), 1, time.monotonic() + seconds
    ids = [f"dev-{i:04d}" for i in range(devices)]
    n = 0
    while time.monotonic() < end:
        d = ids[n % devices]
        recs = [InferenceRecord(seq=seq + k, t=time.time(), outputs=[0.9, 0.1], label="normal",
                                score=0.1, latency_ms=4.0) for k in range(10)]  # fmt: skip
        msg = InferenceBatch(device_id=d, boot_id=boot, seq=seq, sent_at=time.time(),
                             model="vib", model_version="1.0.0", records=recs)  # fmt: skip
        info = c.publish(topics.telemetry(FLEET, d, "inference"), codec.encode(msg), qos=1)
        seq += 10
        n += 1
        if n % 200 == 0:
            info.wait_for_publish(30)  # keep paho's queue bounded
    c.disconnect()
    c.loop_stop()


def wait_devices(cloud: Cloud, n: int) -> None:
    """Until the store knows ``n`` devices."""
    assert cloud.store is not None
    deadline = time.monotonic() + 60
    while len(cloud.store.devices(fleet=FLEET)) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the store did not reach {n} devices")
        time.sleep(0.05)


def wait_feed_stopped(dash: Dashboard, timeout: float = 30.0) -> None:
    """Until no stream is open and the feed thread has stopped (it reads nothing then)."""
    deadline = time.monotonic() + timeout
    while dash.feed.viewers or dash.feed.running:
        if time.monotonic() > deadline:
            raise TimeoutError("the live feed did not stop after the last viewer left")
        time.sleep(0.05)


def shown_mark(page: Any, n: int) -> float:
    """Seconds from navigation until the overview had painted all ``n`` devices."""
    name = f"edgefleet:devices-shown:{n}"
    page.wait_for_function(
        "name => performance.getEntriesByName(name).length > 0", arg=name, timeout=60_000
    )
    count = page.locator("[data-testid=count-devices]").inner_text()
    assert count == str(n), f"the overview shows {count} devices, not {n}"
    ms = page.evaluate("name => performance.getEntriesByName(name)[0].startTime", name)
    return float(ms) / 1000.0


def first_paint(
    browser: Any, url: str, n: int, dash: Dashboard, repeats: int = 3
) -> tuple[float, float]:
    """Median seconds from navigation to the overview showing ``n`` devices; server CPU s.

    Each load is cold: the feed has stopped and dropped its snapshot, the browser context is new.
    """
    paints, cpu = [], []
    for _ in range(repeats):
        wait_feed_stopped(dash)
        assert dash.feed.current()[1] is None, "a stopped feed kept its snapshot"
        context = browser.new_context()
        page = context.new_page()
        c0 = time.process_time()
        page.goto(url + "/")
        paints.append(shown_mark(page, n))
        cpu.append(time.process_time() - c0)
        context.close()
    return statistics.median(paints), statistics.median(cpu)


def stage_cpu(cloud: Cloud) -> float:
    """CPU seconds the ingest stages (child processes) have reported so far."""
    return sum(w.stats.stage_cpu_s for w in cloud.workers)


def stored(cloud: Cloud) -> int:
    """Inference records in the store now (committed, whatever the workers have reported)."""
    assert cloud.store is not None
    return cloud.store.count("inference")


def watch(url: str) -> None:
    """Read the live stream of the overview until terminated (a viewer without a browser)."""
    with (
        httpx.Client(base_url=url, timeout=None) as http,
        http.stream("GET", "/dashboard/api/stream") as r,
    ):
        for _line in r.iter_lines():
            pass


def browser_cpu() -> float:
    """CPU seconds of the Chromium processes this benchmark started (children of its driver)."""
    total = 0.0
    for proc in psutil.Process().children(recursive=True):
        try:
            if "chrom" in proc.name().lower():
                t = proc.cpu_times()
                total += t.user + t.system
        except psutil.Error:  # a process that ended in between
            continue
    return total


def thread_cpu(name: str) -> float:
    """CPU seconds of this process's thread called ``name`` so far."""
    ids = {t.native_id for t in threading.enumerate() if t.name == name}
    threads = psutil.Process().threads()
    return float(sum(t.user_time + t.system_time for t in threads if t.id in ids))


def _verdict(pairs: list[float]) -> dict[str, Any]:
    cost = statistics.mean(pairs)
    noise = statistics.stdev(pairs) / len(pairs) ** 0.5
    # Within or over the budget only when the difference is larger than twice its noise.
    if cost + 2 * noise <= BUDGET:
        verdict = "within budget"
    elif cost - 2 * noise > BUDGET:
        verdict = "over budget"
    else:
        verdict = "inconclusive: the difference is within twice its standard error of the budget"
    return {
        "cost": round(cost, 4),
        "stderr": round(noise, 4),
        "verdict": verdict,
        "per_phase": [round(x, 4) for x in pairs],
    }


def live_view_cost(browser: Any, url: str, dash: Dashboard, cloud: Cloud) -> dict[str, Any]:
    """Ingest throughput with a live viewer of 1,000 devices vs the dashboard truly off."""
    import subprocess

    rates: list[float] = []
    cpu: list[float] = []
    stage: list[float] = []
    feed_cpu = feed_polls = browser_s = 0.0
    # Server CPU of each phase's viewer: the feed thread plus the HTTP server's thread, which
    # encodes and writes the stream's events.
    server: list[float] = []
    for mode in PHASES:
        context = viewer = None
        if mode == "page":
            context = browser.new_context()
            page = context.new_page()
            page.goto(url + "/")
            shown_mark(page, 1000)
        elif mode == "stream":
            viewer = subprocess.Popen([sys.executable, __file__, "--watch", url])
            polls = dash.feed.polls
            deadline = time.monotonic() + 60
            while dash.feed.polls < polls + 2:  # subscribed, and the feed is polling
                if time.monotonic() > deadline:
                    raise TimeoutError("the stream viewer did not subscribe")
                time.sleep(0.05)
        else:
            wait_feed_stopped(dash)
        time.sleep(SETTLE_S)
        polls0, f0, b0 = dash.feed.polls, dash.feed.poll_cpu_seconds, browser_cpu()
        h0 = thread_cpu("cloud-http")
        n0, t0, c0, g0 = stored(cloud), time.monotonic(), time.process_time(), stage_cpu(cloud)
        time.sleep(PHASE_S)
        rates.append((stored(cloud) - n0) / (time.monotonic() - t0))
        cpu.append((time.process_time() - c0) / PHASE_S)
        stage.append((stage_cpu(cloud) - g0) / PHASE_S)
        http_s = thread_cpu("cloud-http") - h0
        server.append((dash.feed.poll_cpu_seconds - f0 + http_s) / PHASE_S)
        if mode == "off":
            assert dash.feed.polls == polls0, "the feed polled while the dashboard was off"
            continue
        assert dash.feed.polls > polls0, "the live view did not poll"
        feed_cpu += dash.feed.poll_cpu_seconds - f0
        feed_polls += dash.feed.polls - polls0
        if context is not None:
            browser_s += browser_cpu() - b0
            context.close()
        if viewer is not None:
            viewer.terminate()
            viewer.wait(30)
    out: dict[str, Any] = {}
    off = [i for i, m in enumerate(PHASES) if m == "off"]
    off_cores = statistics.mean(cpu[i] + stage[i] for i in off)
    off_cloud = statistics.mean(cpu[i] for i in off)
    for mode, name in (("stream", "live_view"), ("page", "browser_on_host")):
        on = [i for i, m in enumerate(PHASES) if m == mode]
        # Each on phase against the mean of the off phases just before and after it.
        pairs = [1 - rates[i] / ((rates[i - 1] + rates[i + 1]) / 2) for i in on]
        v = _verdict(pairs)
        out |= {
            f"ingest_cost_of_{name}": v["cost"],
            f"ingest_cost_of_{name}_stderr": v["stderr"],
            f"ingest_cost_of_{name}_verdict": v["verdict"],
            f"ingest_cost_of_{name}_per_phase": v["per_phase"],
            f"ingest_records_per_s_{mode}": round(statistics.mean(rates[i] for i in on), 1),
            f"cloud_process_cores_{mode}": round(statistics.mean(cpu[i] for i in on), 3),
            f"live_view_server_cores_{mode}": round(statistics.mean(server[i] for i in on), 4),
            # The cores the viewer costs the server (feed thread + HTTP thread) over the cores
            # ingest (its stage processes and the cloud process) uses with the dashboard off:
            # the cost if every cycle came out of ingest. Steadier than the throughput
            # comparison; the browser's own CPU is not in it.
            f"ingest_cost_cpu_estimate_{mode}": round(
                statistics.mean(server[i] for i in on) / off_cores, 4
            ),
        }
    n_on = sum(m != "off" for m in PHASES)
    return out | {
        "ingest_cost_budget": BUDGET,
        "ingest_cost_within_budget": out["ingest_cost_of_live_view_verdict"] == "within budget",
        "ingest_records_per_s_off": round(statistics.mean(rates[i] for i in off), 1),
        "ingest_off_phase_spread": round(
            (max(rates[i] for i in off) - min(rates[i] for i in off))
            / statistics.mean(rates[i] for i in off),
            4,
        ),
        "cloud_process_cores_off": round(off_cloud, 3),
        "live_view_server_cores_off": round(statistics.mean(server[i] for i in off), 4),
        "ingest_stage_cores_off": round(statistics.mean(stage[i] for i in off), 3),
        "phases": f"{len(off)} off, {n_on} on ({n_on // 2} stream, {n_on // 2} page), "
        f"{PHASE_S:g} s each",
        # CPU of the feed thread alone, as a fraction of one core, and per poll.
        "live_feed_cpu_fraction_1000": round(feed_cpu / (n_on * PHASE_S), 4),
        "live_feed_cpu_ms_per_poll_1000": round(1000 * feed_cpu / max(1.0, feed_polls), 2),
        "browser_cores_page": round(browser_s / ((n_on // 2) * PHASE_S), 3),
    }


def main() -> None:
    """Run the measurements and print the JSON line."""
    import subprocess

    from playwright.sync_api import sync_playwright

    tmp = Path(tempfile.mkdtemp(prefix="dashboard-bench-"))
    broker = MosquittoBroker(tmp / "broker").start()
    # idle_stop_s=0: the feed stops as soon as the last viewer leaves, so "off" is truly off.
    config = CloudConfig(workdir=tmp / "cloud", broker_url=broker.url, fleet=FLEET, http_port=0,
                         throttle_rate=1e6, throttle_burst=1e6,
                         dashboard=DashboardSettings(interval_s=1.0, idle_stop_s=0.0))  # fmt: skip
    cloud = Cloud(config).start()
    dash = cloud.dashboard
    assert dash is not None
    url = cloud.http_url
    metrics: dict[str, Any] = {"cpu_count": os.cpu_count(), "loadavg_1m_start": os.getloadavg()[0]}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
            ids = [f"dev-{i:04d}" for i in range(1000)]
            births(broker.host, broker.port, ids[:100])
            wait_devices(cloud, 100)
            fp, cpu = first_paint(browser, url, 100, dash)
            metrics |= {
                "first_paint_s_100": round(fp, 3),
                "server_cpu_s_first_load_100": round(cpu, 4),
            }
            births(broker.host, broker.port, ids[100:])
            wait_devices(cloud, 1000)
            fp, cpu = first_paint(browser, url, 1000, dash)
            metrics |= {
                "first_paint_s_1000": round(fp, 3),
                "server_cpu_s_first_load_1000": round(cpu, 4),
            }
            # Ingest saturated by a blaster in its own process; the live view off/on alternating.
            proc = subprocess.Popen([sys.executable, __file__, "--blast", broker.host,
                                     str(broker.port), "1000", "3600"])  # fmt: skip
            try:
                time.sleep(10)  # warm-up: the broker queue fills, ingest reaches its pace
                metrics |= live_view_cost(browser, url, dash, cloud)
            finally:
                proc.terminate()
                proc.wait(30)
            browser.close()
    finally:
        cloud.stop()
        broker.stop()
    metrics["loadavg_1m_end"] = os.getloadavg()[0]
    emit("dashboard_load", metrics, ("fastapi", "uvicorn", "paho-mqtt", "playwright"))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--blast":
        blast(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--watch":
        watch(sys.argv[2])
    else:
        main()
