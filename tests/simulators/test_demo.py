"""`edgefleet demo` runs the whole system end to end and fails loudly on bad input."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from support.sim_fleet import invariant, read_report, run_cli, shared_cache


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_cache(tmp_path_factory)


@pytest.mark.slow(seconds=170)
def test_demo_with_five_devices_for_thirty_seconds(cache: Path, tmp_path: Path) -> None:
    # With its default work directory (relative), started from a directory of its own: the
    # federated ServerApp runs elsewhere and must still find the run's files.
    here = tmp_path / "elsewhere"
    here.mkdir()
    out = run_cli(["demo", "--devices", "5", "--duration", "30"], cache, cwd=here)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "every invariant holds" in out.stdout
    workdir = here / ".edgefleet-demo"
    assert f"work directory {workdir}" in out.stdout
    report = read_report(workdir / "report.json")
    assert report["ok"] is True
    assert report["devices"] == 5
    # Where everything is: the broker, and the dashboard page itself (/dashboard redirects).
    assert re.search(r"^broker mqtt://127\.0\.0\.1:\d+$", out.stdout, re.M), out.stdout[:2000]
    assert re.search(r"^dashboard http://127\.0\.0\.1:\d+/$", out.stdout, re.M)
    assert "/dashboard" not in out.stdout
    # The token its cloud made, to log in to the dashboard and call the API with.
    token = re.search(r"^API token (ef_\S+) \(admin; also in (\S+)\)$", out.stdout, re.M)
    assert token, out.stdout[:2000]
    assert Path(token[2]).read_text().strip() == token[1]
    assert re.search(r"^dashboard login http://127\.0\.0\.1:\d+/login", out.stdout, re.M)
    # Not a terminal: plain progress lines while the fleet streams, not one final panel.
    progress = re.findall(r"^\[\s*[\d.]+s\] running: \d/5 online", out.stdout, re.M)
    assert len(progress) >= 3, out.stdout[-3000:]
    # Every device id whole in the final table.
    for device in report["per_device"]:
        assert re.search(rf"^[│|] {re.escape(device)}\s+[│|]", out.stdout, re.M), device
    # One device of five reads through an emulated MCU and the real serial bridge.
    bench = report["per_device"]["bench-0000"]
    assert bench["stored"] > 0
    assert sum(d.startswith("bench-") for d in report["per_device"]) == 1
    t = report["totals"]
    assert t["produced"] == t["stored"] > 0
    assert t["duplicates"] == t["lost"] == 0
    assert t["wills_seen"] == t["wills_expected"] == 1
    # The drift it injects, and what the cloud saw of it: on the timeline and in the report.
    pumps = sorted(d for d in report["per_device"] if d.startswith("pumps-"))
    (drift,) = report["drift"]
    assert (drift["group"], drift["drift"], drift["magnitude"], drift["at"]) == (
        "pumps", "mode", 1.5, 9.0,
    )  # fmt: skip
    assert drift["devices"] == pumps
    assert drift["control_devices"] == ["bench-0000"]
    for side in ("before", "after", "control_before", "control_after"):
        assert drift[side]["records"] > 0, side
        assert drift[side]["mean_score"] is not None, side
    assert drift["after"]["sketches"] > 0
    print("drift seen:", {k: drift[k] for k in ("before", "after", "moved")})
    events = [e["event"] for e in report["timeline"]]
    assert any(e.startswith("drift onset: mode x1.5 into group pumps (2 devices") for e in events)
    assert any(e.startswith("cloud so far: drift mode x1.5 into pumps") for e in events)
    assert "drift onset: mode x1.5 into group pumps" in out.stdout
    assert re.search(
        r"^drift mode x1\.5 into pumps \(2 devices\) at 9s: the cloud saw mean", out.stdout, re.M
    )
    # A federated round on three trainer agents (their own SuperNodes) fine-tuned 1.0.0...
    assert invariant(report, "federated round registered a model")["ok"] is True
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
    reached = invariant(report, "the learned version reached every device")
    assert reached["ok"] is True, reached
    if "REJECTED" in note:
        # Worse than 1.0.0: registered but never assigned, the fleet keeps 1.0.0.
        assert "not assigned, the fleet keeps vibration-anomaly@1.0.0" in note
        assert assignments == []
    else:
        # Accepted: it went to the devices of its model (2 pumps, 1 bench, 3 trainers).
        assert " accepted (" in note
        (assignment,) = assignments
        assert assignment["model"] == "vibration-anomaly@1.0.1"
        assert assignment["states"] == {"succeeded": 6}
        assert reached["detail"] == "vibration-anomaly@1.0.1 to 6 devices: 6 succeeded"
    assert invariant(report, "every assigned model")["ok"] is True
    assert "federated learning: run fl-" in out.stdout


@pytest.mark.slow(seconds=120)
def test_a_demo_whose_federated_round_fails_fails(cache: Path, tmp_path: Path) -> None:
    # A round that cannot wait for its trainers: the cloud's quorum check fails it for real.
    out = run_cli(
        ["demo", "--devices", "3", "--duration", "10", "--fl-timeout", "0.1",
         "--workdir", str(tmp_path)],
        cache,
    )  # fmt: skip
    assert out.returncode == 6, out.stdout[-3000:] + out.stderr[-3000:]
    assert "every invariant holds" not in out.stdout
    assert "federated round registered a model" in out.stderr
    report = read_report(tmp_path / "report.json")
    assert report["ok"] is False
    row = invariant(report, "federated round registered a model")
    assert row["ok"] is False
    assert "quorum not reached" in row["detail"], row
    # The stand-in still shows the rollout, and says what it is.
    assert "the demo went on with vibration-anomaly@1.1.0" in row["detail"]
    assert invariant(report, "the learned version reached every device")["ok"] is True
    (note,) = [n for n in report["notes"] if n.startswith("federated round FAILED: ")]
    assert "(the demo fails)" in note
    assert re.search(r"^[│|] federated round .*[│|] NO ", out.stdout, re.M), out.stdout[-3000:]


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
