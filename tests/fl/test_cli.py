"""``edgefleet fl``: bad options fail with typed errors before anything starts."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from edgefleet.cloud.fl.cli import app
from edgefleet.cloud.fl.errors import FlSettingsError
from edgefleet.cloud.fl.settings import DpSettings, RunSettings


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["start", "--model", "digits", "--secagg", "--strategy", "krum"], "FedAvg only"),
        (["start", "--model", "digits", "--secagg", "--cloud", "http://x"], "--cloud"),
        (["start", "--model", "digits", "--secagg", "--secagg-threshold", "1"], "threshold"),
        (["start", "--model", "digits", "--strategy", "fedsgd"], "--strategy"),
        (["start", "--model", "digits", "--dp", "client-magic"], "--dp"),
        (["start", "--model", "digits", "--rounds", "0"], "--rounds"),
        (["start", "--model", "digits", "--from", "1.0.0"], "--from needs the registry"),
    ],
)
def test_bad_options_raise_typed_errors(args, match, tmp_path):
    result = CliRunner().invoke(app, [*args, "--workdir", str(tmp_path)])
    assert isinstance(result.exception, FlSettingsError)
    assert match in str(result.exception)


def test_settings_round_trip_and_krum_needs_enough_clients(tmp_path):
    s = RunSettings(
        model="digits",
        rounds=2,
        min_clients=5,
        workdir=str(tmp_path),
        strategy="krum",
        num_malicious=1,
        dp=DpSettings(kind="server-fixed", noise_multiplier=0.5),
    )
    assert RunSettings.read(s.write()) == s
    assert s.dp.lineage()["kind"] == "server-fixed"
    with pytest.raises(FlSettingsError, match="krum"):
        RunSettings(
            model="digits", rounds=1, min_clients=3, workdir=".", strategy="krum", num_malicious=1
        )
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(FlSettingsError):
        RunSettings.read(tmp_path / "bad.json")


def test_root_cli_exit_code_for_secagg(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgefleet.cli",
            "fl",
            "start",
            "--model",
            "digits",
            "--secagg",
            "--dp",
            "server-fixed",
            "--workdir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == FlSettingsError.exit_code
    assert "FedAvg only" in proc.stderr + proc.stdout


def test_round_metrics_are_published_once_per_round(tmp_path):
    from edgefleet.cloud.fl.runs.publish import publish_round
    from edgefleet.cloud.store import open_store

    store = open_store(f"sqlite:///{tmp_path / 'c.db'}")
    try:
        rec = {"round": 2, "status": "skipped", "reason": "quorum not reached", "at": 5.0}
        publish_round(store, "digits", "run-1", rec)
        publish_round(store, "digits", "run-1", rec)  # replay: stored once
        rows = store.records("events", device_id="fl:digits")
    finally:
        store.close()
    assert len(rows) == 1
    assert rows[0]["kind"] == "fl_round"
    assert rows[0]["level"] == "warning"
    assert rows[0]["data"]["reason"] == "quorum not reached"


def test_dp_of_a_cloud_run_reaches_the_server_settings_its_record_and_the_lineage(tmp_path):
    from flwr.serverapp.strategy import DifferentialPrivacyServerSideAdaptiveClipping

    from edgefleet.cloud.fl.apps.outcome import RunOutcome
    from edgefleet.cloud.fl.apps.strategies import make_strategy
    from edgefleet.cloud.fl.runs.handoff import run_lineage
    from edgefleet.cloud.fl.runs.journal import RunJournal
    from edgefleet.cloud.fl.runs.run import FlRun, FlRunRequest

    req = FlRunRequest(
        model="digits", min_clients=4, dp="server-adaptive", dp_noise=0.3, dp_clip=2.0
    )
    settings = req.run_settings(tmp_path / "run", "digits@1.0.0")
    wanted = DpSettings(kind="server-adaptive", noise_multiplier=0.3, clipping_norm=2.0)
    assert settings.dp == wanted
    assert settings.parent == "digits@1.0.0"
    # What the ServerApp process reads, and the strategy it builds from it.
    assert RunSettings.read(settings.write()).dp == wanted
    assert isinstance(make_strategy(settings), DifferentialPrivacyServerSideAdaptiveClipping)
    run = FlRun("fl-0123456789ab", req, ["a", "b"])
    assert run.to_json()["settings"]["dp"] == wanted.lineage()
    assert FlRun("fl-1", FlRunRequest(model="digits"), []).to_json()["settings"]["dp"] == {
        "kind": "none"
    }
    journal = RunJournal(tmp_path / "journal")
    journal.save(run)
    (back,) = list(journal.load())
    assert back.request.dp_settings() == wanted  # a restarted cloud shows the same run
    outcome = RunOutcome(settings, [{"status": "aggregated"}], [], participants=2)
    lineage = run_lineage(outcome, "digits@1.0.0")
    assert lineage.dp == {"kind": "server-adaptive", "noise_multiplier": 0.3, "clipping_norm": 2.0}
    assert (lineage.parent, lineage.fl_rounds, lineage.fl_strategy) == ("digits@1.0.0", 1, "fedavg")
    with pytest.raises(FlSettingsError, match="--dp must be one of"):
        FlRunRequest(model="digits", dp="magic")
    with pytest.raises(FlSettingsError, match="clipping norm"):
        FlRunRequest(model="digits", dp="local", dp_clip=0.0)
    # Flower's adaptive clipping refuses this noise for 2 clients: refused before any run.
    with pytest.raises(FlSettingsError, match=r"below 0\.2 "):
        FlRunRequest(model="digits", min_clients=2, dp="server-adaptive", dp_noise=0.3)
