"""``edgefleet sim``: run a simulated fleet from a scenario, or validate a scenario file."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from edgefleet.protocol.errors import ConfigError
from edgefleet.simulators.errors import InvariantViolation

app = typer.Typer(
    help="Simulate a whole fleet on one machine: real agents, emulated MCUs, scripted faults.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command()
def run(  # noqa: PLR0917 - typer maps each parameter to an option
    devices: Annotated[
        int | None, typer.Option(min=1, help="Devices (default: the scenario's group counts).")
    ] = None,
    duration: Annotated[
        float | None, typer.Option(min=1, help="Seconds of streaming (default: the scenario's).")
    ] = None,
    scenario: Annotated[
        Path | None, typer.Option(help="Scenario YAML (simulators/scenarios/ has examples).")
    ] = None,
    broker: Annotated[
        str, typer.Option(help="auto, embedded, mosquitto, or mqtt://HOST:PORT of a running one.")
    ] = "auto",
    cloud: Annotated[
        str | None,
        typer.Option(
            help="http://HOST:PORT of a running cloud's API: the fleet reports to it and the "
            "checks read it through the API (needs --broker mqtt://HOST:PORT of its broker)."
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="EDGEFLEET_TOKEN",
            help="With --cloud: an API token for it (env EDGEFLEET_TOKEN); a viewer token "
            "reads, an operator token is needed for scenarios that assign models.",
            show_default=False,
        ),
    ] = None,
    command_key: Annotated[
        Path | None,
        typer.Option(
            "--command-key",
            help="With --cloud: that cloud's command.pub (<its workdir>/keys/command.pub); the "
            "simulated agents accept only commands signed by it.",
            show_default=False,
        ),
    ] = None,
    with_cloud: Annotated[
        bool,
        typer.Option(
            "--with-cloud", help="Start the cloud in this process (the default without --cloud)."
        ),
    ] = False,
    db: Annotated[
        str | None,
        typer.Option(help="With --with-cloud: its store (default: SQLite in the work directory)."),
    ] = None,
    processes: Annotated[int, typer.Option(min=1, help="Worker processes (use the cores).")] = 1,
    seed: Annotated[int | None, typer.Option(help="Override the scenario's seed.")] = None,
    workdir: Annotated[Path, typer.Option(help="Outboxes, broker, cloud and report.")] = Path(
        ".edgefleet-sim"
    ),
    report: Annotated[Path | None, typer.Option(help="Write the JSON report here.")] = None,
    live: Annotated[bool, typer.Option(help="Show the live view while running.")] = True,
    drain_timeout: Annotated[
        float, typer.Option(min=0, help="Seconds to wait for outboxes to empty at the end.")
    ] = 90.0,
) -> None:
    """Run N real agents against a broker and the cloud, play the timeline, check invariants."""
    from edgefleet.simulators.fleet import SimOptions, Simulation, absolute
    from edgefleet.simulators.live import make_console
    from edgefleet.simulators.scenario import default_scenario, load_scenario

    if cloud is not None and with_cloud:
        raise ConfigError("give --cloud URL or --with-cloud, not both")
    # Absolute once, here: child processes (broker, SuperLink, ServerApp) run elsewhere.
    workdir = absolute(workdir)
    report = absolute(report) if report is not None else None
    console = make_console()
    workdir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        filename=str(workdir / "sim.log"),
        level=logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        force=True,
    )
    spec = load_scenario(scenario) if scenario is not None else default_scenario()
    if devices is None and scenario is None:
        devices = 10
    if duration is None and spec.duration is None:
        duration = 60.0
    options = SimOptions(
        devices=devices,
        duration=duration,
        scenario=spec,
        broker=broker,
        cloud_url=cloud,
        token=token,
        command_key=command_key,
        db_url=db,
        processes=processes,
        seed=seed,
        workdir=workdir,
        report=report,
        live=live,
        drain_timeout=drain_timeout,
    )
    sim = Simulation(options, console)
    try:
        sim.prepare()
        sim.print_access(console)
        result = sim.run()
    finally:
        sim.close()
    assert result.checks is not None
    sim.summary(result.checks)
    where = report or workdir / "report.json"
    console.print(f"report: {where}")
    if not result.ok:
        failed = [i["name"] for i in result.invariants if not i["ok"]]
        raise InvariantViolation(f"invariants failed: {'; '.join(failed)} (see {where})")


@app.command()
def validate(
    scenario: Annotated[Path, typer.Argument(help="Scenario YAML to check.")],
    devices: Annotated[
        int | None, typer.Option(min=1, help="Check against this fleet size.")
    ] = None,
    duration: Annotated[
        float | None, typer.Option(min=1, help="Check against this length.")
    ] = None,
) -> None:
    """Check a scenario file and print the devices and timeline it gives."""
    from edgefleet.simulators.plan import plan_fleet
    from edgefleet.simulators.scenario import load_scenario

    spec = load_scenario(scenario)
    plan = plan_fleet(spec, devices, duration or spec.duration or 60.0)
    console = Console()
    for name, members in plan.groups.items():
        console.print(f"group {name}: {len(members)} devices")
    for a in plan.actions:
        who = f" -> {', '.join(a.devices[:5])}{' ...' if len(a.devices) > 5 else ''}"
        console.print(f"{a.at:7.1f}s {a.kind}{who if a.devices else ''}")
    console.print(f"[green]{scenario} is valid[/]")
