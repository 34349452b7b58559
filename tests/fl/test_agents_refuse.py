"""A federated run whose devices all refuse ends at once, and says why each one refused.

Real agents on Mosquitto: one has ``[fl] enabled = false``, the other needs more training
samples than it will ever buffer. Both ack ``refused`` on ``cmd/start-training/ack``; the
run must fail within seconds (not its 60 s quorum timeout), naming each device's reason in
its error, its ``acks`` (live and on disk), the CLI's output and the dashboard's rounds.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from support.fl_agents import FL_KEYS, MODEL, run_state, start_setup, wait_for
from support.models_zoo import Zoo, shared_zoo
from typer.testing import CliRunner

from edgefleet.cloud.broker import MosquittoBroker
from edgefleet.cloud.fl.cli import app as fl_app
from edgefleet.cloud.fl.errors import FlRunError
from edgefleet.cloud.fl.runs.journal import RunJournal

OFF, STARVED = "fl-off", "fl-starved"
KEYS = {
    OFF: FL_KEYS.replace("enabled = true", "enabled = false"),
    STARVED: FL_KEYS.replace("min_samples = 32", "min_samples = 1000000"),
}
# Long enough that waiting it out cannot pass for failing fast: the run must end in well under
# half of it (starting a SuperLink alone takes 10-30 s on a loaded 2-core machine).
QUORUM_TIMEOUT_S = 300
FAST_S = QUORUM_TIMEOUT_S / 2


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Zoo:
    base = tmp_path_factory.getbasetemp()
    return shared_zoo(base.parent if base.name.startswith("popen-gw") else base)


def _reasons_named(text: str) -> None:
    assert f"{OFF} refused (fl-disabled: federated learning is not enabled here" in text
    assert f"{STARVED} refused (no-training-data: the training buffer holds" in text


@pytest.mark.slow(seconds=90)
def test_a_run_every_device_refuses_fails_fast_with_their_reasons(
    zoo: Zoo, mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    devices = (OFF, STARVED)
    setup = start_setup(zoo, mosquitto.url, mosquitto.port, tmp_path, devices, fl_keys=KEYS)
    try:
        wait_for(
            lambda: {d["device_id"] for d in setup.client.devices() if d["online"]} >= set(devices),
            60,
            "both agents online",
        )
        body = {
            "model": MODEL,
            "rounds": 2,
            "min_clients": 2,
            "quorum_timeout_s": QUORUM_TIMEOUT_S,
            "register": False,
        }
        began = time.monotonic()
        run = setup.client.request("POST", "/v1/fl/runs", json_body=body)
        done = wait_for(
            lambda: (
                (s := run_state(setup.client, run["id"]))["state"] in ("finished", "failed") and s
            ),
            FAST_S,
            "the run to end",
        )
        took = time.monotonic() - began
        assert done["state"] == "failed"
        assert took < FAST_S, f"the run waited {took:.0f} s for a quorum it could not reach"
        assert done["reason"] == "fl-quorum"
        assert "quorum cannot be reached: 2 of 2 device(s) refused or failed" in done["error"]
        _reasons_named(done["error"])
        for acks in (done["acks"], RunJournal(tmp_path / "fl").path(run["id"]).read_text()):
            assert "fl-disabled" in str(acks)
            assert "no-training-data" in str(acks)
        assert done["acks"][OFF]["status"] == done["acks"][STARVED]["status"] == "refused"
        (listed,) = [r for r in setup.client.request("GET", "/v1/fl/runs") if r["id"] == run["id"]]
        assert listed["acks"][OFF]["reason"] == "fl-disabled"
        # The dashboard's Learning page: the round the run waited for, skipped, saying why.
        rows = setup.client.request("GET", "/dashboard/api/rounds")
        (row,) = [r for r in rows if r["run_id"] == run["id"]]
        assert row["metrics"]["status"] == "skipped"
        _reasons_named(row["metrics"]["reason"])

        # The CLI follows the same kind of run and exits with the devices' reasons.
        began = time.monotonic()
        result = CliRunner().invoke(
            fl_app,
            ["start", "--model", MODEL, "--cloud", setup.cloud.http_url, "--rounds", "1",
             "--token", str(setup.cloud.admin_token),
             "--quorum-timeout", str(QUORUM_TIMEOUT_S)],
        )  # fmt: skip
        assert time.monotonic() - began < FAST_S
        assert isinstance(result.exception, FlRunError), result.output
        _reasons_named(str(result.exception))
        assert f"{OFF}: refused (fl-disabled" in result.output
    finally:
        setup.stop()
