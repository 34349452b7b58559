"""Federated runs outlive the cloud process: records on disk, unfinished runs come back failed."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest
from support.cloud_auth import client as auth_client
from support.cloud_devices import TestDevice

from edgefleet.cloud.app import Cloud, CloudConfig
from edgefleet.cloud.fl.runs.journal import RunJournal
from edgefleet.cloud.fl.runs.run import FlRun, FlRunRequest
from edgefleet.cloud.fl.runs.service import FlServiceSettings


def _run(state: str = "running") -> FlRun:
    run = FlRun(
        "fl-0123456789ab",
        FlRunRequest(model="digits", rounds=2, min_clients=1, devices=("a", "b")),
        ["a", "b"],
        superlink="127.0.0.1:9092",
    )
    run.state = state  # type: ignore[assignment]
    run.rounds.append({"round": 1, "status": "aggregated", "holdout": {"accuracy": 0.5}})
    return run


def test_a_record_round_trips_and_a_finished_run_stays_as_it_was(tmp_path: Path):
    journal = RunJournal(tmp_path)
    run = _run("finished")
    run.registered, run.rejected, run.finished_at = "digits@1.0.1", False, 123.0
    journal.save(run)
    (back,) = list(journal.load())
    assert back == run
    assert back.request.devices == ("a", "b")


def test_an_unfinished_run_comes_back_failed_as_interrupted(tmp_path: Path):
    journal = RunJournal(tmp_path)
    journal.save(_run("running"))
    (back,) = list(journal.load())
    assert (back.state, back.reason) == ("failed", "interrupted")
    assert back.finished_at is not None
    assert "start a new run" in (back.error or "")
    assert back.rounds[0]["status"] == "aggregated"  # what it did is kept
    # The record itself now says so: a second restart reads the same.
    on_disk = json.loads(journal.path(back.id).read_text())
    assert (on_disk["state"], on_disk["reason"]) == ("failed", "interrupted")


def test_a_damaged_record_is_skipped_and_the_others_load(tmp_path: Path, caplog):
    journal = RunJournal(tmp_path)
    good = _run("finished")
    journal.save(good)
    for name, text in {
        "fl-broken": "{not json",
        "fl-old": json.dumps({"format": 99, "id": "fl-old"}),
        "fl-partial": json.dumps({"format": 1, "id": "fl-partial"}),
        # A request this version refuses (Flower rejects this noise for 2 clients).
        "fl-refused": json.dumps(
            {
                "format": 1,
                "id": "fl-refused",
                "devices": [],
                "request": {"model": "digits", "dp": "server-adaptive", "dp_noise": 0.5},
            }
        ),
    }.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "run.json").write_text(text)
    with caplog.at_level(logging.WARNING, logger="edgefleet.cloud.fl.runs.journal"):
        loaded = list(journal.load())
    assert [r.id for r in loaded] == [good.id]
    assert sum("unreadable" in r.message for r in caplog.records) == 4
    assert (tmp_path / "fl-broken" / "run.json").read_text() == "{not json"  # left for a human


@pytest.mark.slow(seconds=40)
def test_a_failed_run_is_listed_by_the_next_cloud_process(mosquitto_factory, tmp_path: Path):
    mosquitto = mosquitto_factory()  # private: the device's retained status stays here
    config = CloudConfig(
        workdir=tmp_path / "cloud",
        broker_url=mosquitto.url,
        http_port=0,
        fl=FlServiceSettings(workdir=tmp_path / "fl"),
    )
    dev = TestDevice(mosquitto.host, mosquitto.port, "persist-1", "f1")
    cloud = Cloud(config).start()
    try:
        dev.birth()
        client = auth_client(cloud)
        deadline = time.monotonic() + 30
        while not any(d["device_id"] == "persist-1" for d in client.request("GET", "/v1/devices")):
            assert time.monotonic() < deadline, "the device never reached the store"
            time.sleep(0.1)
        # The test device ignores start-training: no SuperNode comes, the quorum times out.
        body = {
            "model": "vibration-anomaly",
            "devices": ["persist-1"],
            "min_clients": 1,
            "rounds": 1,
            "quorum_timeout_s": 1,
            "register": False,
            "dp": "server-fixed",
            "dp_noise": 0.2,
            "dp_clip": 3.0,
        }
        run_id = client.request("POST", "/v1/fl/runs", json_body=body)["id"]
        assert cloud.fl is not None
        first = cloud.fl.wait(run_id, timeout=240).to_json()
        assert (first["state"], first["reason"]) == ("failed", "fl-quorum")
        assert first["rounds"][0]["status"] == "skipped"
        # The DP asked for is what the ServerApp ran with (its settings file), and is shown.
        ran = json.loads((tmp_path / "fl" / run_id / "run" / "settings.json").read_text())
        assert ran["dp"]["kind"] == "server-fixed"
        assert (ran["dp"]["noise_multiplier"], ran["dp"]["clipping_norm"]) == (0.2, 3.0)
        assert first["settings"]["dp"]["kind"] == "server-fixed"
    finally:
        cloud.stop()
        dev.close()
    again = Cloud(config).start()
    try:
        runs = auth_client(again).request("GET", "/v1/fl/runs")
        assert [r["id"] for r in runs] == [run_id]
        listed = runs[0]
        for key in ("state", "reason", "error", "rounds", "devices", "superlink", "settings"):
            assert listed[key] == first[key], key
    finally:
        again.stop()
