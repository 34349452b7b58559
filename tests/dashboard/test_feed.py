"""Snapshots, diffs, alerts and the live feed over a real SQLite store; the SSE stream over HTTP."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from support.cloud_ingest import sqlite_url, unique_fleet
from support.dashboard_cloud import dashboard_cloud
from support.dashboard_devices import SimDevice

from edgefleet.cloud.broker import MosquittoBroker
from edgefleet.cloud.dashboard import AlertRules, DashboardSettings
from edgefleet.cloud.dashboard.alerts import device_alerts
from edgefleet.cloud.dashboard.feed import LiveFeed
from edgefleet.cloud.dashboard.snapshot import take_snapshot
from edgefleet.cloud.store import open_store
from edgefleet.cloud.store.base import DeviceUpdate, IngestBatch, StatusUpdate
from edgefleet.protocol.errors import ConfigError


@pytest.fixture
def store(tmp_path: Path):
    s = open_store(sqlite_url(tmp_path))
    yield s
    s.close()


def _status(store, device: str, online: bool, reason: str = "start", **health: object) -> None:
    now = time.time()
    dev = DeviceUpdate(device, "f1", now, StatusUpdate(online, reason, "b1", "0.1.0", "m", "1"))
    if health:
        dev.health, dev.health_t = dict(health), now
    store.write_batch(IngestBatch(devices={device: dev}))


def test_diff_carries_only_changed_devices(store) -> None:
    rules = AlertRules()
    for i in range(5):
        _status(store, f"d{i}", True)
    first = take_snapshot(store, rules)
    assert first.summary["devices"] == 5
    assert first.summary["online"] == 5
    assert take_snapshot(store, rules).diff(first, 2) is None  # nothing changed
    _status(store, "d3", False, "lwt")
    diff = take_snapshot(store, rules).diff(first, 2)
    assert diff is not None
    assert [r["id"] for r in diff["upsert"]] == ["d3"]
    assert diff["upsert"][0]["on"] is False
    assert diff["summary"]["offline"] == 1
    assert diff["alerts"][0]["kind"] == "offline"
    assert diff["alerts"][0]["level"] == "error"


def test_alerts_for_heat_drops_backlog_and_shutdown(store) -> None:
    rules = AlertRules(temperature_c=70, outbox_depth=100)
    _status(store, "hot", True, temperature_c=81.0, outbox_drops=3, outbox_depth=500)
    _status(store, "gone", False, "shutdown")
    kinds = {a.kind for a in device_alerts(store.device("hot"), rules, time.time())}
    assert kinds == {"hot", "outbox-drops", "outbox-backlog"}
    (off,) = device_alerts(store.device("gone"), rules, time.time())
    assert off.level == "warning"
    assert "shut down" in off.message


def test_feed_gives_full_snapshot_to_viewers_that_fell_behind(store) -> None:
    _status(store, "a", True)
    feed = LiveFeed(lambda: take_snapshot(store, AlertRules()), history=2)
    feed.poll_once()
    start = feed.version
    for i in range(4):
        _status(store, "a", i % 2 == 1)
        feed.poll_once()
    assert feed.version == start + 4
    assert feed.since(start) is None  # older diffs are gone: send a snapshot
    assert [d["v"] for d in feed.since(start + 2) or []] == [start + 3, start + 4]
    assert feed.since(feed.version) == []


def test_feed_thread_runs_only_while_watched(store) -> None:
    _status(store, "a", True)
    feed = LiveFeed(lambda: take_snapshot(store, AlertRules()), interval_s=0.05, idle_stop_s=0)
    with feed.subscription():
        deadline = time.monotonic() + 5
        while feed.polls < 3:
            assert time.monotonic() < deadline, "the feed thread did not poll"
            time.sleep(0.01)
    deadline = time.monotonic() + 5
    while feed._thread is not None:
        assert time.monotonic() < deadline, "the feed thread did not stop when idle"
        time.sleep(0.01)
    polls = feed.polls
    time.sleep(0.2)
    assert feed.polls == polls  # nobody watches: the store is not read at all
    assert not feed.running
    # The stopped feed forgot its snapshot: a viewer who comes back sees the fleet as it is now.
    assert feed.current()[1] is None
    assert feed.since(feed.version - 1) is None
    _status(store, "a", False, "lwt")
    with feed.subscription():
        deadline = time.monotonic() + 5
        while (snap := feed.current()[1]) is None:
            assert time.monotonic() < deadline, "the feed did not take a fresh snapshot"
            time.sleep(0.01)
        assert snap.summary["offline"] == 1
    feed.close()


@pytest.mark.parametrize(
    "kwargs",
    [{"interval_s": 0.0}, {"interval_s": 120}, {"history": 0}, {"max_stream_s": 0}],
)
def test_bad_settings_are_config_errors(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        DashboardSettings(**kwargs)  # type: ignore[arg-type]


def test_bad_alert_rules_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        AlertRules(max_listed=0)


def _events(lines, want: int) -> list[tuple[str, dict]]:
    out, name = [], None
    for line in lines:
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: ") and name is not None:
            out.append((name, json.loads(line[6:])))
            name = None
            if len(out) >= want:
                break
    return out


@pytest.mark.slow
def test_stream_sends_snapshot_then_diffs_and_series(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    fleet = unique_fleet()
    with dashboard_cloud(tmp_path, mosquitto.url, fleet, interval_s=0.2) as dc:
        dev = SimDevice(mosquitto.host, mosquitto.port, "s-1", fleet)
        dev.birth()
        dev.send_inference(3)
        assert dev.wait_committed()
        with (
            httpx.Client(base_url=dc.url, timeout=10, headers=dc.headers) as http,
            http.stream("GET", "/dashboard/api/stream", params={"device": "s-1"}) as r,
        ):
            assert r.headers["content-type"].startswith("text/event-stream")
            lines = r.iter_lines()
            (name, snap), (name2, series) = _events(lines, 2)
            assert name == "snapshot"
            assert [d["id"] for d in snap["devices"]] == ["s-1"]
            assert name2 == "series"
            assert len(series["inference"]["t"]) == 3
            dev.send_health(temperature_c=90.0)
            got = _events(lines, 2)
        names = {n for n, _ in got}
        assert names == {"diff", "series"}
        diff = next(d for n, d in got if n == "diff")
        assert diff["upsert"][0]["temp"] == 90.0
        assert diff["alerts"][0]["kind"] == "hot"
        with httpx.Client(base_url=dc.url, timeout=10, headers=dc.headers) as http:
            assert http.get("/dashboard/api/rounds").json() == []
            # The JSON view reads the same round source as the stream (markers included).
            source = _Rounds()
            source.items.append({"run_id": "r1", "round": 3, "started_at": 1.0, "metrics": {}})
            dc.dashboard.rounds = source
            snap = http.get("/dashboard/api/snapshot").json()
            assert [r["round"] for r in snap["markers"]["rounds"]] == [3]
            assert [d["id"] for d in snap["devices"]] == ["s-1"]
            assert http.get("/dashboard/api/devices/nope/series").status_code == 404
            assert http.get("/").headers["content-type"].startswith("text/html")
            js = http.get("/dashboard/static/vendor/uplot/uPlot.iife.min.js")
            assert js.status_code == 200
            assert "uPlot" in js.text[:200]
        dev.close()


class _Rounds:
    """A round source as the federated-learning part will provide (our own seam)."""

    def __init__(self) -> None:
        self.items: list[dict] = []

    def rounds(self, limit: int) -> list[dict]:
        return self.items[:limit]


def test_new_federated_round_changes_the_rounds_marker(store) -> None:
    source = _Rounds()
    rules = AlertRules()
    first = take_snapshot(store, rules, rounds=source)
    assert first.markers["rounds"] == []
    source.items.insert(
        0, {"run_id": "r1", "round": 1, "started_at": 1.0, "metrics": {"loss": 0.3}}
    )
    diff = take_snapshot(store, rules, rounds=source).diff(first, 2)
    assert diff is not None
    assert diff["markers"]["rounds"][0]["round"] == 1
