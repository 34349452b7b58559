"""``/v1/fl/runs`` refuses what cannot run, before anything starts; rounds reach the dashboard."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.cloud_auth import auth_headers, token_env
from support.cloud_auth import client as auth_client
from typer.testing import CliRunner

from edgefleet.cloud.app import Cloud, CloudConfig
from edgefleet.cloud.client import CloudClient
from edgefleet.cloud.errors import CloudError
from edgefleet.cloud.fl.cli import app as fl_app
from edgefleet.cloud.fl.errors import FlSettingsError
from edgefleet.cloud.fl.runs.publish import publish_round
from edgefleet.cloud.fl.runs.roundsource import StoreRounds
from edgefleet.cloud.fl.runs.run import FlRunRequest
from edgefleet.cloud.fl.runs.service import FlServiceSettings
from edgefleet.protocol.errors import EdgefleetError


@pytest.fixture
def cloud(mosquitto, tmp_path: Path):
    c = Cloud(
        CloudConfig(
            workdir=tmp_path / "cloud",
            broker_url=mosquitto.url,
            http_port=0,
            fl=FlServiceSettings(workdir=tmp_path / "fl", signing_key=tmp_path / "no.key"),
        )
    ).start()
    yield c
    c.stop()


def _refused(client: CloudClient, body: dict) -> EdgefleetError:
    with pytest.raises(EdgefleetError) as info:
        client.request("POST", "/v1/fl/runs", json_body=body)
    return info.value


def test_runs_that_cannot_start_are_refused_with_a_reason(cloud, mosquitto, tmp_path):
    client = auth_client(cloud)
    assert client.request("GET", "/v1/fl/runs") == []
    assert _refused(client, {"model": "no-such"}).reason == "unknown-model"
    err = _refused(client, {"model": "vibration-anomaly", "min_clients": 2})
    assert err.reason == "too-few-devices"
    assert "0 device(s) can train vibration-anomaly" in str(err)
    assert _refused(client, {"model": "digits", "devices": ["ghost"]}).reason == "no-targets"
    assert _refused(client, {"model": "digits", "strategy": "best"}).reason == "bad-fl-settings"
    err = _refused(client, {"model": "digits", "register": False, "assign": True})
    assert "assign needs register" in str(err)
    with pytest.raises(EdgefleetError) as info:
        client.request("GET", "/v1/fl/runs/fl-nope")
    assert "no federated run" in str(info.value)
    # Without a signing key a run that should register is refused.
    assert cloud.fl is not None
    cloud.fl.settings = FlServiceSettings(workdir=tmp_path / "fl")
    with pytest.raises(FlSettingsError, match="signing key"):
        cloud.fl.start(FlRunRequest(model="digits"))


def test_round_events_become_dashboard_rounds(cloud):
    assert cloud.store is not None
    rec = {
        "round": 1,
        "status": "aggregated",
        "reason": "",
        "replies": 3,
        "sampled": 3,
        "failures": 0,
        "client_loss_before": 1.5,
        "client_loss_after": 1.2,
        "holdout": {"loss": 0.9, "roc_auc": 0.8},
        "seconds": 11.0,
        "at": 1000.0,
    }
    publish_round(cloud.store, "vibration-anomaly", "fl-r1", rec)
    publish_round(cloud.store, "vibration-anomaly", "fl-r1", {**rec, "round": 2, "at": 1012.0})
    publish_round(cloud.store, "vibration-anomaly", "fl-r1", rec)  # a replay: stored once
    source = StoreRounds(cloud.store, lambda: {"vibration-anomaly"})
    rows = source.rounds(10)
    assert [(r["run_id"], r["round"]) for r in rows] == [("fl-r1", 2), ("fl-r1", 1)]
    assert rows[0]["participants"] == 3
    assert rows[0]["metrics"]["holdout_roc_auc"] == 0.8
    assert StoreRounds(cloud.store).rounds(10) == []  # no model known, nothing read
    # The cloud's own source reads registered models and its runs' models: neither names this.
    assert auth_client(cloud).request("GET", "/dashboard/api/rounds") == []


def test_cli_cloud_options(cloud):
    runner = CliRunner(env=token_env(cloud))
    result = runner.invoke(fl_app, ["start", "--model", "digits", "--every", "60"])
    assert isinstance(result.exception, FlSettingsError)
    assert "need --cloud" in str(result.exception)
    result = runner.invoke(
        fl_app, ["start", "--model", "vibration-anomaly", "--cloud", cloud.http_url]
    )
    assert isinstance(result.exception, CloudError)
    assert result.exception.reason == "too-few-devices"
    # --dp reaches the cloud's run request: a bad one is refused there, with the reason.
    for dp in (["--dp", "magic"], ["--dp", "server-adaptive", "--dp-noise", "0.5"]):
        result = runner.invoke(
            fl_app, ["start", "--model", "vibration-anomaly", "--cloud", cloud.http_url, *dp]
        )
        assert isinstance(result.exception, CloudError), result.output
        assert result.exception.reason == "bad-fl-settings", dp


def test_from_version_must_be_registered(cloud, tmp_path):
    import httpx

    client = auth_client(cloud)
    err = _refused(client, {"model": "vibration-anomaly", "from_version": "9.9.9"})
    assert err.reason == "unknown-version"
    assert "vibration-anomaly@9.9.9 is not registered (registered versions: none)" in str(err)
    err = _refused(client, {"model": "vibration-anomaly", "from_version": "digits@1.0.0"})
    assert err.reason == "unknown-version"
    answer = httpx.post(
        f"{cloud.http_url}/v1/fl/runs",
        json={"model": "digits", "from_version": "1.0.0"},
        headers=auth_headers(cloud),
    )
    assert answer.status_code == 422
    assert answer.json()["reason"] == "unknown-version"
    assert cloud.fl is not None
    with pytest.raises(FlSettingsError, match="not registered"):
        cloud.fl.start(FlRunRequest(model="digits", from_version="1.0.0"))
