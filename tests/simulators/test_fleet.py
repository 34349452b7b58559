"""Whole simulated fleets of real agents on a real broker and cloud: the invariants hold."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from support.sim_fleet import invariant, read_report, run_cli, shared_cache

from edgefleet.cloud.broker import MosquittoBroker
from edgefleet.simulators.fleet import SimOptions, run_simulation
from edgefleet.simulators.scenario import parse_scenario

ACCEPTANCE = {
    "name": "acceptance",
    "seed": 7,
    "groups": [
        {"name": "pumps", "share": 0.4, "model": "vibration-anomaly", "rate_hz": 64, "chunk": 32},
        {"name": "wearables", "share": 0.4, "model": "activity", "rate_hz": 32, "chunk": 32},
        {"name": "loggers", "model": "none", "rate_hz": 2, "chunk": 2, "publish_readings": True},
    ],
    # The crashes come before the outage: 2 s after the broker's return (as this once had it)
    # a device may still be in its reconnect backoff, and a crash while offline rightly expects
    # no will, which made the test's "2 wills" a race.
    "events": [
        {"at": 4, "kind": "crash", "group": "pumps", "count": 2, "restart_after": 2},
        {"at": 7, "kind": "broker-outage", "for": 20},
        {"at": 25, "kind": "partition", "group": "wearables", "for": 4},
    ],
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_cache(tmp_path_factory)


@pytest.mark.slow(seconds=50)
def test_fifty_devices_through_outage_crashes_and_partition(cache: Path, tmp_path: Path) -> None:
    options = SimOptions(
        devices=50,
        duration=30.0,
        scenario=parse_scenario(ACCEPTANCE),
        broker="mosquitto",
        processes=2,
        workdir=tmp_path,
        cache_dir=cache,
        live=False,
    )
    report = run_simulation(options)
    t = report.totals
    assert report.ok, report.invariants
    assert report.devices == 50
    assert report.processes == 2
    assert t["produced"] > 0
    assert t["lost"] == 0
    assert t["duplicates"] == 0
    assert t["produced"] == t["stored"] + t["dropped"]
    assert t["left_in_outbox"] == 0
    assert t["crashes"] == 2
    assert t["wills_seen"] == t["wills_expected"] == 2
    # Every device saw the outage and replayed its outbox after it.
    assert all(d["replays"] >= 2 for d in report.per_device.values())
    crashed = [d for d in report.per_device.values() if d["crashes"]]
    assert len(crashed) == 2
    assert all(d["boots"] == 2 and d["group"] == "pumps" for d in crashed)
    events = [e["event"] for e in report.timeline]
    assert "broker killed for 20s" in events
    assert "broker back" in events
    assert (tmp_path / "report.json").exists()


def test_against_a_running_broker(cache: Path, mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    spec = parse_scenario(
        {
            "seed": 2,
            "groups": [
                {
                    "name": "loggers",
                    "model": "none",
                    "rate_hz": 4,
                    "chunk": 2,
                    "publish_readings": True,
                }
            ],
        }
    )
    report = run_simulation(
        SimOptions(
            devices=3,
            duration=3.0,
            scenario=spec,
            broker=mosquitto.url,
            workdir=tmp_path,
            cache_dir=cache,
            live=False,
        )
    )
    assert report.ok, report.invariants
    assert report.broker == mosquitto.url
    assert report.totals["produced"] == report.totals["stored"] > 0


def test_an_outage_needs_a_broker_the_simulator_owns(
    cache: Path, mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    scenario = tmp_path / "s.yaml"
    scenario.write_text(
        "groups: [{name: a, model: none}]\nevents: [{at: 1, kind: broker-outage, for: 1}]\n"
    )
    out = run_cli(
        [
            "sim",
            "run",
            "--devices",
            "2",
            "--duration",
            "5",
            "--scenario",
            str(scenario),
            "--broker",
            mosquitto.url,
            "--workdir",
            str(tmp_path / "w"),
        ],
        cache,
        timeout=120,
    )
    assert out.returncode == 4, out.stderr[-2000:]
    assert "the simulator cannot stop" in out.stderr


def test_a_bad_scenario_exits_4(cache: Path, tmp_path: Path) -> None:
    scenario = tmp_path / "s.yaml"
    scenario.write_text("groups: [{name: a}]\nevents: [{at: 1, kind: earthquake}]\n")
    out = run_cli(["sim", "validate", str(scenario)], cache, timeout=120)
    assert out.returncode == 4
    assert "unknown event kind 'earthquake'" in out.stderr


@pytest.mark.slow(seconds=20)
def test_records_never_delivered_break_the_invariant(cache: Path, tmp_path: Path) -> None:
    # The group is cut off until the very end and the run does not wait for outboxes to
    # drain: records are left undelivered, so the run must fail with exit status 6.
    scenario = tmp_path / "s.yaml"
    scenario.write_text(
        "groups: [{name: a, model: none, rate_hz: 10, chunk: 5, publish_readings: true}]\n"
        "events: [{at: 2, kind: partition, group: a, for: 6}]\n"
    )
    out = run_cli(
        [
            "sim",
            "run",
            "--devices",
            "2",
            "--duration",
            "8",
            "--scenario",
            str(scenario),
            "--broker",
            "mosquitto",
            "--drain-timeout",
            "0",
            "--no-live",
            "--workdir",
            str(tmp_path / "w"),
            "--report",
            str(tmp_path / "r.json"),
        ],
        cache,
        timeout=200,
    )
    assert out.returncode == 6, out.stderr[-3000:]
    assert "invariants failed: every outbox drained by the end" in out.stderr
    report = read_report(tmp_path / "r.json")
    assert report["ok"] is False
    assert report["totals"]["left_in_outbox"] > 0
    assert invariant(report, "every outbox drained")["ok"] is False
    # Nothing was lost or duplicated: the records wait in the outboxes.
    assert invariant(report, "produced = stored once")["ok"] is True


EVERY_KIND = {
    "name": "every-kind",
    "seed": 11,
    "groups": [
        # Readings only (no model): every sample is a record, so each effect is visible in the
        # cloud's readings table.
        {"name": "capped", "count": 2, "model": "none", "rate_hz": 20, "chunk": 4,
         "publish_readings": True},
        {"name": "drifty", "count": 1, "model": "none", "rate_hz": 10, "chunk": 2,
         "publish_readings": True},
        {"name": "slowpoke", "count": 1, "model": "none", "rate_hz": 4, "chunk": 2,
         "publish_readings": True},
        {"name": "skewed", "count": 1, "model": "none", "rate_hz": 4, "chunk": 2,
         "publish_readings": True},
        {"name": "bench", "count": 1, "model": "none", "rate_hz": 20, "chunk": 4,
         "source": "serial", "publish_readings": True},
    ],
    "events": [
        # Offline with room for 5 records while ~100 are read: the oldest are dropped.
        {"at": 2, "kind": "outbox-cap", "group": "capped", "max_records": 5, "for": 5},
        {"at": 3, "kind": "drift", "group": "drifty", "drift": "shift", "magnitude": 5},
        # Each 0.5 s chunk handed over 1.5 s late for 4 s: the device falls seconds behind.
        {"at": 3, "kind": "slow", "group": "slowpoke", "delay_ms": 1500, "for": 4},
        {"at": 4, "kind": "clock-skew", "group": "skewed", "offset_s": 3600},
    ],
}  # fmt: skip


def _readings(db: Path, device: str) -> list[tuple[float, float, list[float]]]:
    """(t, received_at, values) of a device's stored readings, oldest first."""
    con = sqlite3.connect(db)
    try:
        rows = con.execute(
            "SELECT t, received_at, samples FROM readings WHERE device_id = ? "
            "ORDER BY boot_id, seq",
            (device,),
        ).fetchall()
    finally:
        con.close()
    return [(float(t), float(r), json.loads(v)) for t, r, v in rows]


@pytest.mark.slow(seconds=45)
def test_drift_slow_clock_skew_outbox_cap_and_a_serial_device(cache: Path, tmp_path: Path) -> None:
    report = run_simulation(
        SimOptions(duration=14.0, scenario=parse_scenario(EVERY_KIND), broker="mosquitto",
                   workdir=tmp_path, cache_dir=cache, live=False)
    )  # fmt: skip
    assert report.ok, report.invariants
    per = report.per_device
    db = tmp_path / "cloud" / "edgefleet.db"

    # outbox-cap: records were dropped, some the cloud never got, and every one it lacks is
    # covered by a counted drop (lost = max(0, missing - dropped) = 0).
    capped = [per[f"capped-{i:04d}"] for i in range(2)]
    assert all(d["dropped"] > 0 and d["missing"] > 0 and d["lost"] == 0 for d in capped)
    assert all(d["missing"] <= d["dropped"] for d in capped)
    assert report.totals["dropped"] == sum(d["dropped"] for d in capped)

    # The serial device (emulated MCU on a pty, read by the real bridge) produced records, and
    # every sample its source read is a stored reading.
    bench = per["bench-0000"]
    assert bench["readings_stored"] > 20
    assert bench["samples"] == bench["readings_stored"]

    # drift: the cloud's readings of the drifting device moved by the shift.
    rows = _readings(db, "drifty-0000")
    start = rows[0][0]
    before = np.array([v for t, _, v in rows if t < start + 2.5])
    after = np.array([v for t, _, v in rows if t > start + 4.5])
    assert len(before) > 10
    assert len(after) > 10
    moved = np.abs(after.mean(axis=0) - before.mean(axis=0))
    assert (moved > 2 * before.std(axis=0)).any(), (moved, before.std(axis=0))

    # slow: chunks reached the cloud seconds after they were read (lag piles up per chunk).
    lag = [r - t for t, r, _ in _readings(db, "slowpoke-0000")]
    assert max(lag) > 2.0

    # clock skew: the stamps jump by the offset once, and run one sample period apart around it.
    stamps = [t for t, _, _ in _readings(db, "skewed-0000")]
    gaps = np.diff(stamps)
    jumps = gaps[gaps > 1.0]
    assert len(jumps) == 1
    assert jumps[0] == pytest.approx(3600 + 0.25, abs=0.6)
    assert np.allclose(gaps[gaps <= 1.0], 0.25, atol=1e-6)
