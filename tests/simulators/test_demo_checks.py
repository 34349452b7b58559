"""The demo's own invariants and what it shows, without running a whole demo (fast)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from io import StringIO
from pathlib import Path

import pytest
from rich.console import Console

from edgefleet.cloud.store import open_store
from edgefleet.cloud.store.base import Assignment, AssignmentTarget, DeviceUpdate, IngestBatch
from edgefleet.simulators.cloudview import StoreView
from edgefleet.simulators.demo import ASSIGN_ROW, ROUND_ROW, Learned, learning_checks
from edgefleet.simulators.driftseen import drift_actions, observe
from edgefleet.simulators.fleet import SimOptions
from edgefleet.simulators.invariants import Checks, DeviceCheck, Invariant
from edgefleet.simulators.live import LiveState, summary_table
from edgefleet.simulators.plan import plan_fleet
from edgefleet.simulators.scenario import DriftOnset, Group, Scenario


def assignment(states: dict[str, str], aid: str = "as-1") -> Assignment:
    targets = tuple(
        AssignmentTarget(d, s, None if s == "succeeded" else "bad-signature", None, 0.0)  # type: ignore[arg-type]
        for d, s in states.items()
    )
    return Assignment(
        id=aid, fleet="demo", model="vibration-anomaly", version="1.0.1", sha256="0" * 64,
        size=1, url="/x", selector_kind="list", selector=tuple(states), created_at=0.0,
        targets=targets,
    )  # fmt: skip


def row(checks: list[Invariant], name: str) -> Invariant:
    (found,) = [c for c in checks if c.name == name]
    return found


def test_a_failed_federated_round_fails_its_row_even_with_a_fallback_that_worked() -> None:
    learned = Learned(
        ref="vibration-anomaly@1.1.0",
        how="re-trained centrally (seed 1) as vibration-anomaly@1.1.0",
        round_error="SimulationError: federated run failed: quorum not reached: 0 of 3",
        assignment_id="as-1",
        targets=2,
    )
    checks = learning_checks(learned, [assignment({"p0": "succeeded", "p1": "succeeded"})])
    fl = row(checks, ROUND_ROW)
    assert not fl.ok
    assert "quorum not reached: 0 of 3" in fl.detail
    assert "the demo went on with vibration-anomaly@1.1.0" in fl.detail
    # The fallback's own assignment worked, and says so.
    assert row(checks, ASSIGN_ROW).ok


def test_a_registered_round_passes_and_a_rejected_version_is_not_an_assignment_failure() -> None:
    how = "federated round: 1 round(s) on 3 trainer agents, registered m@1.0.1 REJECTED (...)"
    learned = Learned(ref=None, how=how, registered="m@1.0.1")
    checks = learning_checks(learned, [])
    assert row(checks, ROUND_ROW) == Invariant(ROUND_ROW, True, how)
    assert row(checks, ASSIGN_ROW).ok
    assert "nothing to assign" in row(checks, ASSIGN_ROW).detail


def test_an_assignment_a_device_refused_or_never_made_fails_its_row() -> None:
    base = {"ref": "m@1.0.1", "how": "federated", "registered": "m@1.0.1", "targets": 2}
    refused = learning_checks(
        Learned(**base, assignment_id="as-1"),  # type: ignore[arg-type]
        [assignment({"p0": "succeeded", "p1": "refused"})],
    )
    inv = row(refused, ASSIGN_ROW)
    assert not inv.ok
    assert "p1 refused: bad-signature" in inv.detail
    assert "1 refused, 1 succeeded" in inv.detail
    never = row(learning_checks(Learned(**base), []), ASSIGN_ROW)  # type: ignore[arg-type]
    assert not never.ok
    assert "never assigned" in never.detail
    failed = Learned(**base, assign_error="CloudError: 409 model not registered")  # type: ignore[arg-type]
    assert "409 model not registered" in row(learning_checks(failed, []), ASSIGN_ROW).detail
    gone = Learned(ref=None, how="", round_error="flwr missing", retrain_error="OSError: disk")
    checks = learning_checks(gone, [])
    assert not row(checks, ROUND_ROW).ok
    assert not row(checks, ASSIGN_ROW).ok
    assert "OSError: disk" in row(checks, ASSIGN_ROW).detail


@pytest.fixture
def view(tmp_path: Path) -> Iterator[StoreView]:
    v = StoreView(open_store(f"sqlite:///{tmp_path / 'store.db'}"))
    yield v
    v.close()


def store_inference(view: StoreView, device: str, t0: float, scores: list[float]) -> None:
    batch = IngestBatch()
    batch.records["inference"] = [
        (device, "b1", i + 1, t0 + i, t0 + i, "m", "1.0.0", "[0]",
         "anomaly" if s > 0.5 else "normal", s, 1.0)
        for i, s in enumerate(scores)
    ]  # fmt: skip
    batch.devices[device] = DeviceUpdate(device, "demo", t0)
    view.store.write_batch(batch)


def test_the_cloud_s_view_of_a_drift_compares_the_drifted_devices_with_a_control(
    view: StoreView,
) -> None:
    scenario = Scenario(
        name="t", seed=1, fleet="demo",
        groups=[Group(name="pumps", count=2, model="vibration-anomaly"),
                Group(name="bench", count=1, model="vibration-anomaly"),
                Group(name="wearables", count=1, model="activity")],
        events=[DriftOnset(at=10.0, group="pumps", drift="mode", magnitude=1.5)],
    )  # fmt: skip
    plan = plan_fleet(scenario, None, 20.0)
    (action,) = drift_actions(plan)
    t0 = time.time() - 100
    # Scores on the devices' clocks: 10 s before the onset, 10 s after.
    for d in plan.groups["pumps"]:
        store_inference(view, d, t0, [0.1] * 10 + [0.9] * 10)
    (bench,) = plan.groups["bench"]
    store_inference(view, bench, t0, [0.2] * 20)
    seen = observe(view, plan, action, t0, t0 + 20)
    assert seen.devices == list(plan.groups["pumps"])
    assert seen.control_devices == [bench]  # same model, not drifted; wearables run another
    assert (seen.before.records, seen.after.records) == (20, 20)
    assert seen.before.mean_score == pytest.approx(0.1)
    assert seen.after.mean_score == pytest.approx(0.9)
    assert seen.after.labels == {"anomaly": 1.0}
    assert seen.control_before.mean_score == seen.control_after.mean_score == pytest.approx(0.2)
    line = seen.summary()
    assert "drift mode x1.5 into pumps (2 devices) at 10s" in line
    assert "mean score 0.100 -> 0.900, anomaly 0% -> 100% (20 -> 20 records)" in line
    assert "control (1 devices not drifted): mean score 0.200 -> 0.200, normal 100% -> 100%" in line
    assert seen.to_dict()["after"]["mean_score"] == pytest.approx(0.9)


def device_check(device_id: str) -> DeviceCheck:
    return DeviceCheck(
        device_id=device_id, group="g", boots=1, produced=123456, stored=123456, duplicates=0,
        dropped=0, left_in_outbox=0, missing=0, lost=0, unknown=0, crashes=1, wills_expected=1,
        wills_seen=1, unsaved_at_crash=0, samples=0, readings_stored=0, samples_unaccounted=0,
        published_messages=0, replays=0, resends=0,
    )  # fmt: skip


def test_the_final_table_never_truncates_a_device_id() -> None:
    ids = ["wearables-0000", "wearables-0001", "bench-0000"]
    checks = Checks(devices=[device_check(i) for i in ids], invariants=[])
    out = StringIO()
    Console(file=out, width=80).print(summary_table(checks))
    for device in ids:
        assert device in out.getvalue()
    assert "…" not in out.getvalue().split("invariants")[0].split("\n", 3)[-1]


def test_the_plain_progress_line_says_what_the_fleet_does() -> None:
    state = LiveState(title="t", duration=30.0, devices=5, phase="running")
    state.stored = 42
    state.event("drift onset: mode x1.5 into group pumps")
    assert state.log == [state.events[-1]]
    assert "drift onset" in state.log[0]
    assert state.line().endswith("running: 0/5 online, 0.0 msg/s, published 0, outbox 0, "
                                 "stored 42, broker up")  # fmt: skip


def test_relative_paths_enter_the_simulator_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    opts = SimOptions(workdir=Path("run"), report=Path("r.json"), cache_dir=Path("~/c"))
    assert opts.workdir == tmp_path / "run"
    assert opts.report == tmp_path / "r.json"
    assert opts.cache_dir == Path.home() / "c"
    monkeypatch.setenv("EDGEFLEET_CACHE_DIR", "cache")
    from edgefleet.simulators.bundles import cache_root

    assert cache_root() == tmp_path / "cache"


def test_successive_drifts_of_one_group_are_each_judged_against_the_stretch_before(
    view: StoreView,
) -> None:
    from edgefleet.simulators.driftseen import observe_all

    scenario = Scenario(
        name="t", seed=1, fleet="demo",
        groups=[Group(name="drifting", count=1, model="vibration-anomaly")],
        events=[DriftOnset(at=10.0, group="drifting", drift="shift", magnitude=0.5),
                DriftOnset(at=20.0, group="drifting", drift="mode", magnitude=2.0)],
    )  # fmt: skip
    plan = plan_fleet(scenario, None, 30.0)
    t0 = time.time() - 100
    (device,) = plan.groups["drifting"]
    store_inference(view, device, t0, [0.1] * 10 + [0.3] * 10 + [0.9] * 10)
    first, second = observe_all(view, plan, t0, t0 + 30)
    assert (first.before.mean_score, first.after.mean_score) == pytest.approx((0.1, 0.3))
    assert (second.before.mean_score, second.after.mean_score) == pytest.approx((0.3, 0.9))
    assert second.before.records == second.after.records == 10
