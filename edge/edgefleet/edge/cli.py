"""``edgefleet agent``: run the agent, check a config in one dry pass, print a sample, status."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from edgefleet.edge.config import SAMPLE, load_config

if TYPE_CHECKING:
    from edgefleet.edge.install import Plan

app = typer.Typer(
    help="Run and inspect the device agent.", no_args_is_help=True, add_completion=False
)

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="The agent's TOML config file.")]


@app.command()
def run(
    config: ConfigOpt,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    in_process: Annotated[
        bool,
        typer.Option(
            "--in-process",
            help="Run inside this CLI process instead of exec'ing the lean launcher "
            "(python -m edgefleet.edge), which keeps typer and rich out of the agent's memory.",
        ),
    ] = False,
) -> None:
    """Run the agent until SIGTERM or Ctrl-C (then it flushes and says "offline")."""
    load_config(config)  # a bad config fails here, as one clear error of this CLI
    if not in_process:
        from edgefleet.edge.launcher import exec_launcher

        exec_launcher(str(config), log_level)
    from edgefleet.edge.runner import run_agent

    run_agent(config, log_level)


@app.command()
def check(
    config: ConfigOpt,
    windows: Annotated[int, typer.Option(help="How many results to compute.")] = 3,
    broker: Annotated[
        bool,
        typer.Option(
            help="Also connect to the broker the config names (CONNACK, then DISCONNECT)."
        ),
    ] = True,
    broker_timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds to wait for the broker's CONNACK.")
    ] = 5.0,
) -> None:
    """Connect to the broker, then one dry pass: read, infer, print; publish and store nothing.

    Exits 7 when the broker cannot be reached or refuses the connection (after the dry pass,
    so one run reports both).
    """
    from edgefleet.edge.dryrun import dry_run

    cfg = load_config(config)
    console = Console()
    found = None
    if broker:
        from edgefleet.edge.transport.check import check_broker

        found = check_broker(cfg.mqtt, cfg.device.id, broker_timeout)
        console.print(found.line(), highlight=False, soft_wrap=True)
    for line in asyncio.run(dry_run(cfg, windows)):
        console.print(line, highlight=False, soft_wrap=True)
    if found is not None and not found.connected:
        from edgefleet.edge.transport.check import BrokerUnreachable

        raise BrokerUnreachable(f"{found.url}: {found.detail}")


@app.command("config-sample")
def config_sample() -> None:
    """Print a commented sample configuration."""
    typer.echo(SAMPLE, nl=False)


@app.command()
def status(config: ConfigOpt) -> None:
    """Outbox depth and drops, boots, and the model in each slot (reads the state files only)."""
    from edgefleet.edge.dryrun import describe_state

    cfg = load_config(config)
    console = Console()
    for line in describe_state(cfg):
        console.print(line, highlight=False, soft_wrap=True)


@app.command()
def provision(
    cloud: Annotated[str, typer.Option(help="Base URL of the cloud API (http:// or https://).")],
    token: Annotated[
        str,
        typer.Option(
            envvar="EDGEFLEET_CLAIM_TOKEN",
            help="The claim token an admin made (`edgefleet device claim-token`).",
        ),
    ],
    *,
    device_id: Annotated[
        str | None, typer.Option(help="The id to ask for; default: one the cloud assigns.")
    ] = None,
    fleet: Annotated[
        str | None, typer.Option(help="Refuse the token unless it is for this fleet.")
    ] = None,
    config_dir: Annotated[
        Path, typer.Option(help="Where to write agent.toml, the keys and certificates.")
    ] = Path("/etc/edgefleet"),
    bundle: Annotated[
        Path | None, typer.Option(help="A signed bundle to serve until the cloud assigns one.")
    ] = None,
    data_dir: Annotated[
        str | None,
        typer.Option(
            help="State directory for the config; default /var/lib/edgefleet for "
            "/etc/edgefleet (what `agent install` runs), else data/ beside the config."
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option(help="Replace an identity already in --config-dir.")
    ] = False,
) -> None:
    """Make this device's key, claim its identity from the cloud, write its whole config."""
    from edgefleet.edge.provision import provision as run_provision

    done = run_provision(
        cloud,
        token,
        config_dir,
        device_id=device_id,
        fleet=fleet,
        bundle=bundle,
        data_dir=data_dir,
        force=force,
    )
    Console().print(
        f"provisioned {done.device_id} in fleet {done.fleet} (certificate {done.serial}); "
        f"run: edgefleet agent check -c {done.config}",
        highlight=False,
        soft_wrap=True,
    )


@app.command()
def renew(
    config: ConfigOpt,
    force: Annotated[bool, typer.Option(help="Renew now, however much validity remains.")] = False,
) -> None:
    """Renew the device certificate if less than [identity] renew_below of it remains."""
    from edgefleet.edge.provision import renew as run_renew
    from edgefleet.edge.provision import renew_if_due

    cfg = load_config(config)
    new = run_renew(cfg) if force else renew_if_due(cfg)
    console = Console()
    if new is None:
        console.print("the certificate is not due for renewal", highlight=False)
    else:
        console.print(f"renewed: certificate {new.serial:x}", highlight=False)


RootOpt = Annotated[
    Path,
    typer.Option(help="Install into this staging root instead of / (image builders, tests)."),
]
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="Print every file and command; change nothing.")
]


def _run_plan(make: Callable[[], Plan], dry_run: bool, action: str) -> None:
    from edgefleet.edge.install import require_root

    if not dry_run:
        require_root(action)  # before reading anything: the one error a user must see
    plan = make()
    console = Console()
    if dry_run:
        for line in plan.describe():
            console.print(line, highlight=False, soft_wrap=True, markup=False)
        return
    plan.apply(lambda line: console.print(line, highlight=False, soft_wrap=True, markup=False))
    for note in plan.notes:
        console.print(f"note: {note}", highlight=False, soft_wrap=True, markup=False)


@app.command()
def install(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="Config to copy to /etc/edgefleet/agent.toml (default: the "
            "one `edgefleet agent provision` wrote there).",
        ),
    ] = None,
    *,
    venv: Annotated[
        str, typer.Option(help="The service's own venv (made and filled with pip if missing).")
    ] = "/opt/edgefleet/venv",
    use_current_venv: Annotated[
        bool, typer.Option(help="Run the service with this Python instead of its own venv.")
    ] = False,
    package: Annotated[
        str | None,
        typer.Option(
            help="What pip installs into the venv: a wheel file or a requirement "
            "(default: edgefleet[edge] of this version)."
        ),
    ] = None,
    start: Annotated[bool, typer.Option(help="Start the service now (else: enable only).")] = True,
    root: RootOpt = Path("/"),
    dry_run: DryRunOpt = False,
) -> None:
    """Install the agent as a hardened systemd service (user, venv, config, unit)."""
    from pathlib import PurePosixPath

    from edgefleet.edge.install import InstallOptions, plan_install

    opts = InstallOptions(
        root=root, venv=PurePosixPath(venv), use_current_venv=use_current_venv, config=config,
        package=package, start=start,
    )  # fmt: skip
    _run_plan(lambda: plan_install(opts), dry_run, "install")


@app.command()
def uninstall(
    purge: Annotated[
        bool, typer.Option(help="Also remove /etc/edgefleet, /var/lib/edgefleet and the user.")
    ] = False,
    root: RootOpt = Path("/"),
    dry_run: DryRunOpt = False,
) -> None:
    """Stop and remove the service and its venv; keeps config and data unless --purge."""
    from edgefleet.edge.install import plan_uninstall

    _run_plan(lambda: plan_uninstall(root, purge=purge), dry_run, "uninstall")


@app.command()
def upgrade(
    package: Annotated[
        str | None,
        typer.Option(
            help="What pip installs: a wheel file or a requirement (default: the "
            "newest edgefleet[edge])."
        ),
    ] = None,
    root: RootOpt = Path("/"),
) -> None:
    """pip install the new version into the service's venv, check it, restart; else roll back."""
    from edgefleet.edge.install import InstallError, package_spec, require_root, upgrade

    require_root("upgrade")
    console = Console()
    spec = package_spec(package) if package else None
    done = upgrade(root, spec, echo=lambda s: console.print(s, highlight=False, markup=False))
    if done.rolled_back:
        raise InstallError(
            f"the new version failed its check; rolled back to {done.after}: {done.detail}"
        )
    console.print(f"upgraded {done.before} -> {done.after}", highlight=False)
