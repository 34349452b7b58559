"""Whole simulated fleets of real agents on a real broker and cloud: the invariants hold."""

from __future__ import annotations

from pathlib import Path

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
