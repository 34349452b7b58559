"""The dashboard in a real headless Chromium against a real cloud, broker and test devices."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from support.cloud_bundles import make_archive
from support.cloud_ingest import unique_fleet
from support.dashboard_cloud import chromium, dashboard_cloud, screenshot
from support.dashboard_devices import DeviceSwarm, SimDevice
from support.edge_agent import AgentThread, agent_toml, make_config

from edgefleet.cloud.broker import MosquittoBroker
from edgefleet.protocol import topics
from edgefleet.protocol.signing import generate_keypair, load_private_key

pytestmark = pytest.mark.slow


def _text(page, testid: str) -> str:
    return page.locator(f"[data-testid={testid}]").inner_text()


def _wait_text(page, testid: str, value: str, timeout_ms: int = 15_000) -> None:
    page.wait_for_function(
        "([id, v]) => document.querySelector(`[data-testid=${id}]`)?.textContent === v",
        arg=[testid, value],
        timeout=timeout_ms,
    )


def test_overview_counts_devices_and_shows_lwt_offline_within_seconds(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    fleet = unique_fleet()
    with dashboard_cloud(tmp_path / "cloud", mosquitto.url, fleet) as dc:
        devices = [
            SimDevice(mosquitto.host, mosquitto.port, f"pump-{i:02d}", fleet,
                      agent_version="0.1.0" if i else "0.2.0")
            for i in (0, 1, 3)
        ]  # fmt: skip
        for d in devices:
            d.birth()
            d.send_health()
        # pump-02 is a real agent (no model: it still reports health), so its birth, its health
        # and, once it dies, the will the broker publishes for it are the real ones.
        text = agent_toml(tmp_path / "agent", mosquitto.port, device="pump-02")
        agent = AgentThread(make_config(text.replace('fleet = "default"', f'fleet = "{fleet}"')))
        try:
            agent.wait_ready()
            with chromium() as page:
                dc.login(page)
                page.goto(dc.url + "/")
                _wait_text(page, "count-devices", "4")
                _wait_text(page, "count-online", "4")
                assert page.locator("[data-testid=devices] tbody tr").count() == 4
                assert "0.2.0" in page.inner_text("main")  # agent versions are listed
                # The agent's own health samples (every 0.5 s) reach its CPU chart live.
                page.goto(dc.url + "/#/device/pump-02")
                page.wait_for_function(
                    "Number(document.querySelector('[data-chart=cpu]')?.dataset.points) >= 1"
                )
                points = int(page.get_attribute("[data-chart=cpu]", "data-points") or 0)
                page.wait_for_function(
                    "n => Number(document.querySelector('[data-chart=cpu]').dataset.points) >= n",
                    arg=points + 3,
                )
                assert page.locator("[data-chart=cpu] canvas").count() == 1
                series = httpx.get(
                    f"{dc.url}/dashboard/api/devices/pump-02/series", headers=dc.headers
                ).json()
                assert any(v is not None for v in series["health"]["cpu"])
                page.goto(dc.url + "/#/")
                _wait_text(page, "count-online", "4")
                killed = time.monotonic()
                agent.crash()  # no DISCONNECT: the broker publishes the agent's will
                _wait_text(page, "count-offline", "1", timeout_ms=10_000)
                seen_after = time.monotonic() - killed
                row = page.locator("tr[data-device=pump-02]")
                assert row.locator(".state").inner_text() == "offline"
                assert "lost its connection (LWT)" in _text(page, "alerts")
                assert _text(page, "count-online") == "3"
                screenshot(page, "overview-lwt")
                # Not reloaded: the same document got every change over the stream.
                assert page.evaluate("performance.getEntriesByType('navigation').length") == 1
        finally:
            agent.stop()  # a no-op after the crash
            for d in devices:
                d.close()
    assert seen_after < 10


def test_device_page_chart_gains_points_live(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    fleet = unique_fleet()
    with dashboard_cloud(tmp_path, mosquitto.url, fleet) as dc:
        dev = SimDevice(mosquitto.host, mosquitto.port, "press-7", fleet)
        dev.birth()
        dev.send_health()
        dev.send_inference(5)
        with chromium() as page:
            dc.login(page)
            page.goto(dc.url + "/#/device/press-7")
            page.wait_for_function(
                "Number(document.querySelector('[data-chart=latency]').dataset.points) >= 5"
            )
            before = int(page.get_attribute("[data-chart=latency]", "data-points") or 0)
            health_before = int(page.get_attribute("[data-chart=cpu]", "data-points") or 0)
            for _ in range(3):
                dev.send_inference(5)
                dev.send_health()
            page.wait_for_function(
                "n => Number(document.querySelector('[data-chart=latency]').dataset.points) >= n",
                arg=before + 15,
            )
            page.wait_for_function(
                "n => Number(document.querySelector('[data-chart=cpu]').dataset.points) >= n",
                arg=health_before + 3,
            )
            # uPlot drew into a canvas in each chart that has data.
            assert page.locator("[data-chart=latency] canvas").count() == 1
            assert page.locator("[data-chart=score] canvas").count() == 1
            assert page.locator("[data-testid=labels] .bar").count() >= 1
            assert page.locator("[data-testid=device-state]").inner_text() == "online"
            screenshot(page, "device-live")
        with chromium(viewport={"width": 390, "height": 844}) as phone:
            dc.login(phone)
            phone.goto(dc.url + "/")
            _wait_text(phone, "count-devices", "1")
            # Nothing is wider than the phone's screen except inside the scrollable table box.
            overflow = phone.evaluate("document.documentElement.scrollWidth")
            assert overflow <= 390
            screenshot(phone, "overview-phone")
            phone.goto(dc.url + "/#/device/press-7")
            phone.wait_for_selector("[data-chart=latency] canvas")
            assert phone.evaluate("document.documentElement.scrollWidth") <= 390
            screenshot(phone, "device-phone")
        dev.close()


def test_assignments_acks_quarantine_and_empty_rounds(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    fleet = unique_fleet()
    private, public = generate_keypair(tmp_path / "keys")
    archive = make_archive(tmp_path / "bundles", load_private_key(private), name="vib")
    with dashboard_cloud(tmp_path / "cloud", mosquitto.url, fleet, trusted_keys=(public,)) as dc:
        good = SimDevice(mosquitto.host, mosquitto.port, "good-1", fleet)
        bad = SimDevice(mosquitto.host, mosquitto.port, "bad-1", fleet, refuse_models=True)
        for d in (good, bad):
            d.birth()
            d.send_health()
        assert good.wait_committed()
        with httpx.Client(base_url=dc.url, timeout=10, headers=dc.headers) as http:
            r = http.post("/v1/models", content=archive.read_bytes(),
                          headers={"content-type": "application/gzip"})  # fmt: skip
            assert r.status_code == 201, r.text
            r = http.post(
                "/v1/assignments", json={"model": "vib@1.0.0", "devices": ["good-1", "bad-1"]}
            )
            assert r.status_code == 201, r.text
        # A message no device could have sent correctly: quarantined with its reason.
        good.client.publish(topics.telemetry(fleet, "good-1", "health"), b"{not json", qos=1)
        with chromium() as page:
            dc.login(page)
            page.goto(dc.url + "/#/assignments")
            page.wait_for_selector("[data-testid=assignments] .chip.succeeded")
            page.wait_for_selector("[data-testid=assignments] .chip.refused")
            page.click("[data-testid=assignments] summary")
            assert page.locator("[data-testid=assignments] td:has-text('bad-1')").count() >= 1
            screenshot(page, "assignments")
            page.goto(dc.url + "/#/quarantine")
            page.wait_for_selector("[data-testid=quarantine] tbody tr")
            assert "good-1" in page.inner_text("[data-testid=quarantine]")
            screenshot(page, "quarantine")
            page.goto(dc.url + "/#/learning")
            page.wait_for_selector("[data-testid=rounds-empty]")
            page.goto(dc.url + "/#/device/good-1")
            page.wait_for_selector("text=vib@1.0.0")
        good.close()
        bad.close()


def test_thousand_devices_paged_and_filtered(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    fleet = unique_fleet()
    with dashboard_cloud(tmp_path, mosquitto.url, fleet) as dc:
        swarm = DeviceSwarm(mosquitto.host, mosquitto.port, fleet, 1000)
        swarm.births(agents=("0.1.0", "0.1.1"), models=("1.0.0", "1.1.0"))
        with chromium() as page:
            dc.login(page)
            page.goto(dc.url + "/")
            _wait_text(page, "count-devices", "1000", timeout_ms=30_000)
            assert _text(page, "page-info") == "1\u201350 of 1000"
            assert page.locator("[data-testid=devices] tbody tr").count() == 50
            page.click("button:has-text('Next')")
            assert _text(page, "page-info") == "51\u2013100 of 1000"
            page.fill("input[type=search]", "dev-0999")
            assert _text(page, "page-info") == "1\u20131 of 1"
            assert page.locator("tr[data-device=dev-0999]").count() == 1
            page.fill("input[type=search]", "")
            screenshot(page, "overview-1000")
        swarm.close()
