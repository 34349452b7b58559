"""`edgefleet demo` runs the whole system end to end and fails loudly on bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.sim_fleet import invariant, read_report, run_cli, shared_cache


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_cache(tmp_path_factory)


@pytest.mark.slow(seconds=160)
def test_demo_with_five_devices_for_thirty_seconds(cache: Path, tmp_path: Path) -> None:
    out = run_cli(["demo", "--devices", "5", "--duration", "30", "--workdir", str(tmp_path)], cache)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "every invariant holds" in out.stdout
    assert "/dashboard" in out.stdout
    report = read_report(tmp_path / "report.json")
    assert report["ok"] is True
    assert report["devices"] == 5
    # One device of five reads through an emulated MCU and the real serial bridge.
    bench = report["per_device"]["bench-0000"]
    assert bench["stored"] > 0
    assert sum(d.startswith("bench-") for d in report["per_device"]) == 1
    t = report["totals"]
    assert t["produced"] == t["stored"] > 0
    assert t["duplicates"] == t["lost"] == 0
    assert t["wills_seen"] == t["wills_expected"] == 1
    # A federated round on three trainer agents (their own SuperNodes) fine-tuned 1.0.0...
    (note,) = [
        n for n in report["notes"] if n.startswith("federated round: 1 round(s) on 3 trainer")
    ]
    assert "start: fine-tunes vibration-anomaly@1.0.0;" in out.stdout
    # ...and was judged against 1.0.0 with the normal margin (the verdict says both metrics).
    assert "registered vibration-anomaly@1.0.1" in note
    assert "vs 0." in note
    assert "for vibration-anomaly@1.0.0" in note
    print(note)
    assignments = report["extra"]["assignments"]
    if "REJECTED" in note:
        # Worse than 1.0.0: registered but never assigned, the fleet keeps 1.0.0.
        assert "not assigned, the fleet keeps vibration-anomaly@1.0.0" in note
        assert assignments == []
    else:
        # Accepted: it went to the devices of its model (2 pumps, 1 bench, 3 trainers).
        assert " accepted (" in note
        (assignment,) = assignments
        assert assignment["model"] == "vibration-anomaly@1.0.1"
        assert sum(assignment["states"].values()) == 6
        assert set(assignment["states"]) <= {"succeeded", "refused", "failed"}
    assert invariant(report, "every assigned model")["ok"] is True
    assert "federated learning: run fl-" in out.stdout


def test_demo_refuses_a_bad_broker_url(cache: Path, tmp_path: Path) -> None:
    out = run_cli(["demo", "--broker", "http://x", "--workdir", str(tmp_path)], cache, 60)
    assert out.returncode == 4
    assert "give embedded, mosquitto, auto, or mqtt://HOST:PORT" in out.stderr
    assert not (tmp_path / "report.json").exists()


def test_the_verdict_says_how_the_new_version_compares_with_its_parent() -> None:
    from edgefleet.simulators.demo import verdict

    state = {
        "registered": "vibration-anomaly@1.0.1",
        "rejected": False,
        "start": {"from": "vibration-anomaly@1.0.0"},
        "metric": {"roc_auc": 0.81, "baseline_roc_auc": 0.80},
    }
    assert verdict(state) == (
        "registered vibration-anomaly@1.0.1 accepted (roc_auc 0.8100 vs 0.8000 for "
        "vibration-anomaly@1.0.0)"
    )
    state["metric"] = {"roc_auc": 0.79, "baseline_roc_auc": 0.80}
    assert "0.0100 below it, inside the rejection margin" in verdict(state)
    state.update(rejected=True, metric={"roc_auc": 0.70, "baseline_roc_auc": 0.80})
    assert verdict(state) == (
        "registered vibration-anomaly@1.0.1 REJECTED (roc_auc 0.7000 vs 0.8000 for "
        "vibration-anomaly@1.0.0, worse by more than the margin): not assigned, the fleet "
        "keeps vibration-anomaly@1.0.0"
    )
    first = {"registered": "m@1.0.0", "rejected": False, "metric": {"accuracy": 0.9}}
    assert verdict(first) == "registered m@1.0.0 accepted (accuracy 0.9000)"
