"""`edgefleet cloud run` options of the dashboards, end to end in a child process.

Without the web dashboard, Grafana's series are still at /metrics; `--metrics-max-devices` caps
them; `--homeassistant-fleet` publishes discovery configs for that fleet.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from support.cloud_auth import auth_headers
from support.cloud_ingest import unique_fleet
from support.dashboard_devices import SimDevice
from support.mqtt import Probe

from edgefleet.cloud.broker import MosquittoBroker
from edgefleet.cloud.homeassistant import node_id
from edgefleet.cloud.launcher import CloudProcess


def _scrape_until(
    url: str, wanted: list[str], timeout: float = 30, *, headers: dict[str, str]
) -> str:
    """/metrics once every line in ``wanted`` is in it (the collector caches 2 s)."""
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=url, timeout=10, headers=headers) as http:
        while True:
            text = http.get("/metrics").text
            if all(w in text for w in wanted):
                return text
            assert time.monotonic() < deadline, f"/metrics never showed {wanted}:\n{text}"
            time.sleep(0.2)


@pytest.mark.slow(seconds=20)
def test_cloud_run_without_dashboard_keeps_capped_metrics_and_homeassistant(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    fleet = unique_fleet()
    args = ("--no-dashboard", "--metrics-max-devices", "1", "--homeassistant-fleet", fleet)
    cloud = CloudProcess(
        tmp_path / "cloud", broker_url=mosquitto.url, fleet=fleet, extra_args=args
    ).start()
    devices = [SimDevice(mosquitto.host, mosquitto.port, f"m-{i}", fleet) for i in range(2)]
    probe = Probe(mosquitto.host, mosquitto.port)
    auth = auth_headers(tmp_path / "cloud")
    try:
        for d in devices:
            d.birth()
            d.send_health()
        text = _scrape_until(
            cloud.http_url,
            [
                f'edgefleet_device_online{{device="m-0",fleet="{fleet}"}} 1.0',
                "edgefleet_device_series_truncated 1.0",
                f'edgefleet_fleet_devices{{fleet="{fleet}",state="online"}} 2.0',
            ],
            headers=auth,
        )
        assert 'device="m-1"' not in text  # over the cap of one device
        with httpx.Client(base_url=cloud.http_url, timeout=10, headers=auth) as http:
            assert http.get("/").status_code == 404  # --no-dashboard: no page...
            assert http.get("/dashboard/api/snapshot").status_code == 404
            assert http.get("/v1/devices").status_code == 200  # ...but the API is there

        nodes = {node_id(fleet, d.device_id) for d in devices}
        probe.subscribe("homeassistant/#")
        # Home Assistant announcing itself makes the cloud publish every config now.
        probe.publish("homeassistant/status", b"online")

        def ours(ms: list) -> dict[str, dict]:
            # <prefix>/<component>/<node_id>/<object_id>/config of this test's devices only.
            levels = [(m, m.topic.split("/")) for m in ms]
            return {m.topic: json.loads(m.payload) for m, t in levels if t[2:3] and t[2] in nodes}

        assert probe.wait_for(lambda ms: len(ours(ms)) == 14, timeout=20), ours(probe.messages)
        configs = ours(probe.messages)
        assert {c["device"]["identifiers"][0] for c in configs.values()} == nodes
        assert all(c["state_topic"].startswith(f"edgefleet/v1/{fleet}/") for c in configs.values())
    finally:
        probe.close()
        for d in devices:
            d.close()
        cloud.stop()
