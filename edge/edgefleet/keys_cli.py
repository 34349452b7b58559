"""``edgefleet keys``: make and inspect the Ed25519 keys that sign model bundles."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from edgefleet.protocol import signing

app = typer.Typer(
    help="Generate and inspect bundle signing keys.", no_args_is_help=True, add_completion=False
)


@app.command()
def generate(
    out: Annotated[
        Path, typer.Option("--out", help="Directory to write the key pair into.", resolve_path=True)
    ],
    overwrite: Annotated[bool, typer.Option(help="Replace an existing key pair.")] = False,
) -> None:
    """Write a new Ed25519 key pair (private key mode 0600) and print its key id."""
    priv, pub = signing.generate_keypair(out, overwrite=overwrite)
    kid = signing.key_id(signing.load_public_key(pub))
    console = Console()
    console.print(f"private key: {priv}  (keep it secret; it signs bundles)")
    console.print(f"public key:  {pub}  (give it to devices; they trust what it verifies)")
    console.print(f"key id:      {kid}")


@app.command()
def show(key: Annotated[Path, typer.Argument(help="A public or private key file.")]) -> None:
    """Print the key id of a public or private key file."""
    text = key.read_bytes() if key.is_file() else b""
    if b"PRIVATE KEY" in text:
        kid = signing.key_id(signing.load_private_key(key).public_key())
    else:
        kid = signing.key_id(signing.load_public_key(key))
    typer.echo(kid)
