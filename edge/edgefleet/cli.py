"""The ``edgefleet`` command: a thin root that mounts each part's commands lazily.

A Raspberry Pi installs only ``edgefleet[edge]``; ``edgefleet agent ...`` must not import
TensorFlow, Flower or the web stack. So no part is imported until its command is invoked, the
help text of every part is kept here, and a missing optional dependency turns into one line
that names the extra to install (exit status 3, docs/cli.md).
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass
from importlib import metadata
from typing import Annotated, Any

import click
import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from edgefleet.protocol.errors import EdgefleetError, MissingExtra

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_MISSING_EXTRA = 3
EXIT_CONFIG = 4
EXIT_REFUSED = 5
EXIT_INVARIANT = 6
EXIT_UNREACHABLE = 7  # `agent check`: the broker the config names cannot be reached
EXIT_INTERRUPTED = 130

# Set by --verbose and read by edgefleet.models.tfquiet (the edge never imports it); children
# inherit it, so a ServerApp or simulator worker is as verbose as the command that started it.
VERBOSE_ENV = "EDGEFLEET_VERBOSE"


@dataclass(frozen=True, slots=True)
class Part:
    """A lazily mounted command group: the module holding its Typer ``app`` and its extra."""

    module: str
    extra: str
    help: str
    # Modules whose commands join this group (e.g. `models push` lives with the cloud client).
    also: tuple[str, ...] = ()


PARTS: dict[str, Part] = {
    "agent": Part(
        "edgefleet.edge.cli",
        "edge",
        "Run and inspect the device agent; deploy it over SSH.",
        # `agent deploy` runs on a laptop and talks to the cloud API: cloud side of the layering.
        also=("edgefleet.cloud.deploy",),
    ),
    "bridge": Part(
        "edgefleet.firmware_bridge.cli",
        "edge",
        "Serial bridge to microcontrollers: monitor, emulate.",
    ),
    "models": Part(
        "edgefleet.models.cli",
        "cloud",
        "Model zoo: build, verify, inspect, benchmark, push and assign bundles.",
        also=("edgefleet.cloud.models_cli",),
    ),
    "keys": Part("edgefleet.keys_cli", "edge", "Generate and inspect bundle signing keys."),
    "cloud": Part(
        "edgefleet.cloud.cli",
        "cloud",
        "Run the cloud aggregator and query the fleet.",
        also=("edgefleet.cloud.devices_cli",),
    ),
    "device": Part(
        "edgefleet.cloud.identity.cli", "cloud", "Provision, list and revoke device identities."
    ),
    "fl": Part("edgefleet.cloud.fl.cli", "fl", "Federated learning rounds with Flower."),
    "sim": Part("edgefleet.simulators.cli", "sim", "Simulate a whole fleet on one machine."),
    "demo": Part(
        "edgefleet.simulators.demo", "all", "Show the whole system end to end on this machine."
    ),
}

_OUR_ROOT = "edgefleet"

# The extra that brings each third-party module a part may import, at import time or only when
# a command runs (`fl start` imports Flower, `models build` TensorFlow); a module not listed
# here is blamed on the part's own extra. tests/foundation/test_cli.py keeps it true to
# pyproject.toml.
MODULE_EXTRAS: dict[str, str] = {
    "ai_edge_litert": "edge",
    "onnxruntime": "edge",
    "paho": "edge",
    "serial": "edge",
    "cobs": "edge",
    "numpy": "edge",
    "psutil": "edge",
    "flwr": "fl",
    "httpx": "fl",
    "ray": "fl-sim",
    "tensorflow": "cloud",
    "keras": "cloud",
    "onnx": "cloud",
    "tf2onnx": "cloud",
    "sklearn": "cloud",
    "sqlite_utils": "cloud",
    "psycopg": "cloud",
    "fastapi": "cloud",
    "pydantic": "cloud",
    "starlette": "cloud",
    "uvicorn": "cloud",
    "prometheus_client": "cloud",
    "scipy": "cloud",
    "amqtt": "broker",
    "yaml": "sim",
    "asyncssh": "deploy",
}
# The extras each extra pulls in, transitively (pyproject.toml): the part's own extra is the
# better advice whenever it already holds the missing module (`sim` needs uvicorn: install sim).
EXTRA_INCLUDES: dict[str, frozenset[str]] = {
    "edge": frozenset(),
    "fl": frozenset(),
    "fl-sim": frozenset(),
    "broker": frozenset(),
    "deploy": frozenset(),
    "cloud": frozenset({"edge"}),
    "sim": frozenset({"edge", "cloud", "broker"}),
    "all": frozenset({"edge", "fl", "fl-sim", "cloud", "broker", "sim", "deploy"}),
}


def _version() -> str:
    try:
        return metadata.version("edgefleet")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0+unknown"


def load_part(name: str) -> click.Command:
    """Import one part's command group, translating a missing dependency into MissingExtra."""
    part = PARTS[name]
    command = _load(name, part.module, part.extra)
    if isinstance(command, click.Group):
        for extra_module in part.also:
            try:
                more = _load(name, extra_module, part.extra)
            except MissingExtra:
                continue  # an install without that extra simply lacks those commands
            if isinstance(more, click.Group):
                for sub_name, sub in more.commands.items():
                    command.add_command(sub, sub_name)
    return command


def missing_extra(name: str, exc: ModuleNotFoundError) -> MissingExtra | None:
    """The one-line error for part ``name`` lacking a third-party module, or None if not that.

    A module of ours or of the standard library missing is a broken install, not an extra to
    add, so it stays a traceback.
    """
    missing = (exc.name or "").split(".")[0]
    if not missing or missing == _OUR_ROOT or missing in sys.stdlib_module_names:
        return None
    extra = PARTS[name].extra
    needed = MODULE_EXTRAS.get(missing, extra)
    if needed != extra and needed not in EXTRA_INCLUDES.get(extra, frozenset()):
        extra = needed
    return MissingExtra(
        f"`edgefleet {name}` needs the '{extra}' extra: "
        f"pip install 'edgefleet[{extra}]' (missing module: {missing})"
    )


def _load(name: str, module_name: str, extra: str) -> click.Command:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (exc.name == module_name or module_name.startswith(exc.name + ".")):
            raise MissingExtra(
                f"`edgefleet {name}` is not part of this build of edgefleet {_version()}"
            ) from None
        error = missing_extra(name, exc)
        if error is None:
            raise
        raise error from None
    app = module.app
    command = typer.main.get_command(app)
    command.name = name
    return command


class LazyGroup(TyperGroup):
    """Lists every part from :data:`PARTS` but imports one only when it is invoked."""

    # The part being run, so that main() can name its extra when a command imports a missing
    # module while it runs, long after the part itself imported fine.
    invoked: str | None = None

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Names of the eager commands and of every lazy part."""
        return sorted({*super().list_commands(ctx), *PARTS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """The command named ``cmd_name``, importing its part on first use."""
        eager = super().get_command(ctx, cmd_name)
        if eager is not None or cmd_name not in PARTS:
            return eager
        self.invoked = cmd_name
        return load_part(cmd_name)

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Plain click help: typer's rich help would import every part to describe it."""
        click.Group.format_help(self, ctx, formatter)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Write the command list from static help text, so ``--help`` imports nothing."""
        rows = [(name, part.help) for name, part in sorted(PARTS.items())]
        for name in super().list_commands(ctx):
            cmd = super().get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(limit=60)))
        with formatter.section("Commands"):
            formatter.write_dl(sorted(rows))


app = typer.Typer(
    cls=LazyGroup,
    help="edgefleet: run quantized ML models on fleets of small devices.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"edgefleet {_version()}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", callback=_print_version, is_eager=True
        ),
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose", help="Let third-party libraries (TensorFlow, absl) log as they like."
        ),
    ] = False,
) -> None:
    """edgefleet: run quantized ML models on fleets of small devices."""
    if verbose:
        os.environ[VERBOSE_ENV] = "1"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``edgefleet`` script; returns the documented exit status."""
    err = Console(stderr=True, highlight=False)
    command = typer.main.get_command(app)
    try:
        rv: Any = _invoke(command, argv)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        return EXIT_USAGE
    except click.exceptions.Abort:
        err.print("aborted")
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        err.print("interrupted")
        return EXIT_INTERRUPTED
    except EdgefleetError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        return exc.exit_code
    return rv if isinstance(rv, int) else EXIT_OK


def _invoke(command: click.Command, argv: list[str] | None) -> Any:
    """Run the root command; a third-party module missing while a part runs is MissingExtra."""
    try:
        return command.main(args=argv, prog_name="edgefleet", standalone_mode=False)
    except ModuleNotFoundError as exc:
        part = command.invoked if isinstance(command, LazyGroup) else None
        error = missing_extra(part, exc) if part is not None else None
        if error is None:
            raise
        raise error from None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
