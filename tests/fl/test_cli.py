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
    from edgefleet.cloud.fl.publish import publish_round
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
