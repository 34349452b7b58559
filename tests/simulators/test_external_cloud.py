"""`edgefleet sim run --cloud URL`: the fleet reports to a cloud running in another process, and
the invariants are checked through that cloud's HTTP API."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.cloud_auth import admin_token
from support.sim_fleet import invariant, read_report, run_cli, shared_cache
from typer.testing import CliRunner

from edgefleet.cloud.auth import Unauthenticated
from edgefleet.cloud.broker import MosquittoBroker
from edgefleet.cloud.client import CloudClient
from edgefleet.cloud.launcher import CloudProcess
from edgefleet.protocol.errors import ConfigError
from edgefleet.simulators.cli import app as sim_app
from edgefleet.simulators.cloudview import ApiView
from edgefleet.simulators.errors import SimulationError
from edgefleet.simulators.fleet import SimOptions, Simulation, run_simulation
from edgefleet.simulators.scenario import parse_scenario

FLEET = "extsim"


def loggers(fleet: str = FLEET) -> dict[str, Any]:
    return {
        "seed": 3,
        "fleet": fleet,
        "groups": [
            {"name": "loggers", "model": "none", "rate_hz": 4, "chunk": 2, "publish_readings": True}
        ],
    }


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_cache(tmp_path_factory)


@pytest.fixture(scope="module")
def cloud(
    mosquitto: MosquittoBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CloudProcess]:
    """`edgefleet cloud run` in a child process on the session's Mosquitto, fleet FLEET only."""
    with CloudProcess(
        tmp_path_factory.mktemp("ext-cloud"), broker_url=mosquitto.url, fleet=FLEET
    ) as proc:
        yield proc


@pytest.mark.slow(seconds=45)
def test_a_fleet_against_a_cloud_in_another_process(
    cache: Path, cloud: CloudProcess, mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    token = admin_token(cloud.workdir)
    scenario = tmp_path / "s.yaml"
    scenario.write_text(
        f"seed: 3\nfleet: {FLEET}\ngroups:\n"
        "  - {name: loggers, model: none, rate_hz: 4, chunk: 2, publish_readings: true}\n"
    )
    out = run_cli(
        ["sim", "run", "--devices", "3", "--duration", "4", "--scenario", str(scenario),
         "--broker", mosquitto.url, "--cloud", cloud.http_url, "--token", token, "--no-live",
         "--command-key", str(cloud.workdir / "keys" / "command.pub"),
         "--workdir", str(tmp_path / "w"), "--report", str(tmp_path / "r.json")],
        cache,
        timeout=200,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    report = read_report(tmp_path / "r.json")
    assert report["ok"] is True, report["invariants"]
    assert report["api_url"] == cloud.http_url
    t = report["totals"]
    assert t["produced"] == t["stored"] > 0
    # The simulator started no cloud of its own: its work directory has none.
    assert not (tmp_path / "w" / "cloud").exists()
    # What the report counts as stored is what the other process's API serves.
    served = sum(
        len(
            CloudClient(cloud.http_url, token=token).request(
                "GET", f"/v1/telemetry/readings?device={d}"
            )
        )
        for d in report["per_device"]
    )
    assert served >= report["per_device"]["loggers-0000"]["stored"] > 0
    # The live view's count comes from that cloud's Prometheus counter.
    counted = ApiView(cloud.http_url, token=token).stored()
    assert counted is not None
    # Without a token the API refuses, and says how to give one.
    with pytest.raises(Unauthenticated, match="--token"):
        ApiView(cloud.http_url, token="").assignments()
    assert counted >= t["stored"]

    # The same device ids again on the same cloud: the records of the earlier run's boots are
    # not this run's, and do not count as unknown or duplicates.
    again = run_simulation(
        SimOptions(devices=3, duration=3.0, scenario=parse_scenario(loggers()),
                   broker=mosquitto.url, cloud_url=cloud.http_url, token=token,
                   command_key=cloud.workdir / "keys" / "command.pub", workdir=tmp_path / "w2",
                   cache_dir=cache, live=False)
    )  # fmt: skip
    assert again.ok, again.invariants
    assert again.totals["produced"] == again.totals["stored"] > 0
    assert again.totals["unknown"] == again.totals["duplicates"] == 0


@pytest.mark.slow(seconds=30)
def test_records_the_cloud_never_stored_fail_the_run(
    cache: Path, cloud: CloudProcess, mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    # The cloud ingests fleet FLEET only: a fleet of another name is delivered to the broker
    # and acknowledged by it, but never stored, which only the cloud's API can tell.
    report = run_simulation(
        SimOptions(devices=2, duration=3.0, scenario=parse_scenario(loggers("elsewhere")),
                   broker=mosquitto.url, cloud_url=cloud.http_url, token=admin_token(cloud.workdir),
                   command_key=cloud.workdir / "keys" / "command.pub", workdir=tmp_path,
                   cache_dir=cache, live=False, drain_timeout=3.0)
    )  # fmt: skip
    assert report.ok is False
    t = report.totals
    assert t["produced"] > 0
    assert t["stored"] == 0
    # Never committed by the cloud, every record waits in its outbox (none lost, none stored).
    assert t["left_in_outbox"] == t["produced"]
    assert invariant({"invariants": report.invariants}, "every outbox drained")["ok"] is False


def test_cloud_options_are_checked(tmp_path: Path) -> None:
    spec = parse_scenario(loggers())
    key = tmp_path / "command.pub"
    with pytest.raises(ConfigError, match="--cloud needs --command-key PATH"):
        SimOptions(devices=1, duration=5, scenario=spec, cloud_url="http://c:8080")
    with pytest.raises(ConfigError, match="needs --broker mqtt://HOST:PORT"):
        Simulation(
            SimOptions(
                devices=1, duration=5, scenario=spec, cloud_url="http://c:8080", command_key=key
            )
        )
    with pytest.raises(ConfigError, match=r"a running cloud \(--cloud URL\) keeps its own"):
        SimOptions(
            devices=1,
            scenario=spec,
            cloud_url="http://c:8080",
            db_url="sqlite:///x",
            command_key=key,
        )
    with pytest.raises(ConfigError, match="give the cloud's API as http://HOST:PORT"):
        SimOptions(devices=1, scenario=spec, cloud_url="mqtt://c:1883", command_key=key)
    result = CliRunner().invoke(
        sim_app,
        ["run", "--cloud", "http://c:8080", "--with-cloud", "--workdir", str(tmp_path)],
    )
    assert isinstance(result.exception, ConfigError)
    assert "not both" in str(result.exception)


def test_an_unreachable_cloud_is_named(
    cache: Path, mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    sim = Simulation(
        SimOptions(devices=1, duration=5, scenario=parse_scenario(loggers()),
                   broker=mosquitto.url, cloud_url="http://127.0.0.1:9", workdir=tmp_path,
                   command_key=tmp_path / "command.pub",
                   cache_dir=cache, live=False)
    )  # fmt: skip
    try:
        with pytest.raises(SimulationError, match=r"--cloud http://127.0.0.1:9: cannot reach"):
            sim.prepare()
    finally:
        sim.close()
