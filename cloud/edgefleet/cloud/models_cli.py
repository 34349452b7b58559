"""``edgefleet models push|assign``: the registry commands (merged into ``edgefleet models``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from edgefleet.cloud.client import CloudClient
from edgefleet.protocol.errors import ConfigError

app = typer.Typer(
    help="Push bundles to the cloud registry and assign them to devices.",
    no_args_is_help=True,
    add_completion=False,
)
CloudOption = Annotated[str, typer.Option(help="Base URL of the cloud API.")]


@app.command()
def push(
    bundle: Annotated[Path, typer.Argument(help="A signed bundle archive (.tar.gz).")],
    cloud: CloudOption = "http://127.0.0.1:8080",
) -> None:
    """Upload a signed bundle; the cloud refuses it unless a trusted key signed it."""
    if not bundle.is_file():
        raise ConfigError(f"{bundle} is not a file: pack the bundle first (a .tar.gz)")
    model = CloudClient(cloud).push(bundle.read_bytes())
    Console().print(
        f"registered {model['name']}@{model['version']}  sha256 {model['sha256'][:16]}...  "
        f"{model['size']} bytes  signed by {model['key_id']}"
    )


@app.command()
def assign(
    ref: Annotated[str, typer.Argument(help="NAME@VERSION of a pushed model.")],
    *,
    device: Annotated[
        list[str] | None, typer.Option("--device", help="A device id (repeatable).")
    ] = None,
    tag: Annotated[str | None, typer.Option(help="Every device with this tag.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every device of the fleet.")] = False,
    cloud: CloudOption = "http://127.0.0.1:8080",
    as_json: Annotated[bool, typer.Option("--json", help="Print the assignment as JSON.")] = False,
) -> None:
    """Send a model version to devices and show each target's state."""
    if sum([bool(device), tag is not None, all_]) != 1:
        raise ConfigError("give exactly one of --device ID (repeatable), --tag T or --all")
    selector: dict[str, object] = (
        {"devices": device} if device else {"tag": tag} if tag is not None else {"all": True}
    )
    a = CloudClient(cloud).assign(ref, **selector)
    if as_json:
        typer.echo(json.dumps(a, indent=2))
        return
    console = Console()
    console.print(
        f"assignment {a['id']}: {a['model']}@{a['version']} -> {len(a['targets'])} device(s)"
    )
    for t in a["targets"]:
        console.print(f"  {t['device_id']}: {t['state']}")
