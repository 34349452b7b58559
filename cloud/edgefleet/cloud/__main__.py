"""``python -m edgefleet.cloud ...``: the cloud commands without the root CLI (for subprocesses)."""

from __future__ import annotations

import sys

import click
import typer

from edgefleet.cloud.cli import app
from edgefleet.protocol.errors import EdgefleetError


def main(argv: list[str] | None = None) -> int:
    """Run a cloud command; EdgefleetError becomes one line and its exit status."""
    try:
        typer.main.get_command(app).main(
            args=argv, prog_name="edgefleet cloud", standalone_mode=False
        )
    except click.ClickException as exc:
        exc.show()
        return 2
    except EdgefleetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
