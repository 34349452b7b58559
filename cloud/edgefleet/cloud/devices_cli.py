"""``edgefleet cloud forget``: remove a device the fleet no longer has (merged into ``cloud``)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from edgefleet.cloud.client import CloudClient
from edgefleet.cloud.tokens_cli import TokenOption

app = typer.Typer(
    help="Remove devices from the cloud's fleet state.", no_args_is_help=True, add_completion=False
)


@app.callback()
def _group() -> None:
    """Remove devices from the cloud's fleet state."""
    # A callback keeps this a group even with one command, so `edgefleet cloud` can merge it.


@app.command()
def forget(
    device_id: Annotated[str, typer.Argument(help="The id of an offline device.")],
    *,
    purge: Annotated[
        bool,
        typer.Option(help="Also delete its telemetry, events, command acks and quarantine rows."),
    ] = False,
    cloud: Annotated[
        str, typer.Option(help="Base URL of the cloud API.")
    ] = "http://127.0.0.1:8080",
    token: TokenOption = None,
) -> None:
    """Forget an offline device (state, tags, profile); its telemetry stays unless --purge."""
    result = CloudClient(cloud, token=token).forget(device_id, purge=purge)
    rows = {t: n for t, n in result["deleted"].items() if t != "devices" and n}
    kept = "its telemetry is kept" if not purge else f"purged {sum(rows.values())} row(s)"
    detail = f" ({', '.join(f'{t} {n}' for t, n in sorted(rows.items()))})" if rows else ""
    Console().print(f"forgot {device_id}: {kept}{detail}", highlight=False)
