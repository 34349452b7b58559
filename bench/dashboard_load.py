"""Dashboard load: first paint at 100 and 1,000 devices, and what the live view costs ingest.

A real Mosquitto, the in-process cloud with the dashboard mounted, devices published by a
separate process, and Debian's headless Chromium. ``ingest_cost_of_live_view`` compares ingest
throughput (records stored per second, saturated by a blaster process) with the live overview
of 1,000 devices open against the same run with no viewer, in alternating phases.
"""

from __future__ import annotations

import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from _common import emit
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.cloud.app import Cloud, CloudConfig
from edgefleet.cloud.broker import MosquittoBroker
from edgefleet.cloud.dashboard import DashboardSettings
from edgefleet.protocol import codec, topics
from edgefleet.protocol.messages import InferenceBatch, InferenceRecord, Status

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        "--disable-dev-shm-usage"]  # fmt: skip
FLEET = "bench"
PHASE_S = 6.0


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
    """Publish inference batches for ``devices`` devices as fast as the broker takes them."""
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


def first_paint(browser: Any, url: str, n: int, repeats: int = 3) -> tuple[float, float]:
    """Median seconds from navigation to the overview showing ``n`` devices; server CPU s."""
    paints, cpu = [], []
    for _ in range(repeats):
        page = browser.new_page()
        c0 = time.process_time()
        page.goto(url + "/")
        page.wait_for_function(
            "n => document.querySelector('[data-testid=count-devices]')?.textContent === String(n)"
            " && document.querySelectorAll('[data-testid=devices] tbody tr').length > 0",
            arg=n, timeout=60_000,
        )  # fmt: skip
        cpu.append(time.process_time() - c0)
        mark = page.evaluate("performance.getEntriesByName('edgefleet:first-paint')[0].startTime")
        paints.append(mark / 1000.0)
        page.close()
    return statistics.median(paints), statistics.median(cpu)


def inserted(cloud: Cloud) -> int:
    """Records stored so far by all ingest workers."""
    return sum(w.stats.inserted for w in cloud.workers)


def main() -> None:
    """Run the measurements and print the JSON line."""
    import subprocess

    from playwright.sync_api import sync_playwright

    tmp = Path(tempfile.mkdtemp(prefix="dashboard-bench-"))
    broker = MosquittoBroker(tmp / "broker").start()
    config = CloudConfig(workdir=tmp / "cloud", broker_url=broker.url, fleet=FLEET, http_port=0,
                         throttle_rate=1e6, throttle_burst=1e6,
                         dashboard=DashboardSettings(interval_s=1.0))  # fmt: skip
    cloud = Cloud(config).start()
    dash = cloud.dashboard
    assert dash is not None
    url = cloud.http_url
    metrics: dict[str, Any] = {}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
            ids = [f"dev-{i:04d}" for i in range(1000)]
            births(broker.host, broker.port, ids[:100])
            wait_devices(cloud, 100)
            fp, cpu = first_paint(browser, url, 100)
            metrics |= {
                "first_paint_s_100": round(fp, 3),
                "server_cpu_s_first_load_100": round(cpu, 4),
            }
            births(broker.host, broker.port, ids[100:])
            wait_devices(cloud, 1000)
            fp, cpu = first_paint(browser, url, 1000)
            metrics |= {
                "first_paint_s_1000": round(fp, 3),
                "server_cpu_s_first_load_1000": round(cpu, 4),
            }

            # Ingest saturated by a blaster in its own process; live view off/on alternating.
            total = 5 * PHASE_S + 3
            proc = subprocess.Popen([sys.executable, __file__, "--blast", broker.host,
                                     str(broker.port), "1000", str(total)])  # fmt: skip
            time.sleep(3)  # warm-up: the broker queue fills, ingest reaches its pace
            rates: dict[str, list[float]] = {"off": [], "on": []}
            feed_cpu = 0.0
            for phase in ("off", "on", "off", "on", "off"):
                page = None
                if phase == "on":
                    page = browser.new_page()
                    page.goto(url + "/")
                    page.wait_for_selector("body[data-ready]", timeout=60_000)
                polls0, s0 = dash.feed.polls, dash.feed.poll_seconds
                n0, t0 = inserted(cloud), time.monotonic()
                time.sleep(PHASE_S)
                rate = (inserted(cloud) - n0) / (time.monotonic() - t0)
                rates[phase].append(rate)
                if page is not None:
                    feed_cpu += dash.feed.poll_seconds - s0
                    assert dash.feed.polls > polls0, "the live view did not poll"
                    page.close()
            proc.wait(30)
            off, on = statistics.mean(rates["off"]), statistics.mean(rates["on"])
            metrics |= {
                "ingest_cost_of_live_view": round(max(0.0, 1 - on / off), 4) if off else None,
                "ingest_cost_of_live_view_signed": round(1 - on / off, 4) if off else None,
                "ingest_records_per_s_view_off": round(off, 1),
                "ingest_records_per_s_view_on": round(on, 1),
                "live_feed_poll_cpu_fraction_1000": round(feed_cpu / (2 * PHASE_S), 4),
                "live_feed_poll_ms_1000": round(
                    1000 * dash.feed.poll_seconds / max(1, dash.feed.polls), 2
                ),
            }
            browser.close()
    finally:
        cloud.stop()
        broker.stop()
    emit("dashboard_load", metrics, ("fastapi", "uvicorn", "paho-mqtt", "playwright"))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--blast":
        blast(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))
    else:
        main()
