"""``edgefleet fl certs``: a CA and SuperLink certificate, and SuperNode authentication keys."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from edgefleet.cloud.fl.certs import init_certs, node_key

app = typer.Typer(
    help="TLS certificates for the SuperLink and key pairs for SuperNode authentication.",
    no_args_is_help=True,
    add_completion=False,
)

Out = Annotated[Path, typer.Option("--out", help="Directory to write the files into.")]
Overwrite = Annotated[bool, typer.Option(help="Replace existing files.")]


@app.command()
def init(
    *,
    out: Out,
    host: Annotated[
        list[str] | None,
        typer.Option("--host", help="DNS name SuperNodes dial (repeat; localhost is always in)."),
    ] = None,
    ip: Annotated[
        list[str] | None,
        typer.Option("--ip", help="IP address SuperNodes dial (repeat; 127.0.0.1 is always in)."),
    ] = None,
    days: Annotated[int, typer.Option(help="Validity of the SuperLink certificate.")] = 365,
    overwrite: Overwrite = False,
) -> None:
    """Write a self-signed CA and a SuperLink certificate it signs (keys mode 0600)."""
    files = init_certs(out, hosts=host or [], ips=ip or [], days=days, overwrite=overwrite)
    console = Console(highlight=False)
    console.print(f"CA certificate:        {files.ca}  (give it to every SuperNode)")
    console.print(f"CA key:                {files.ca_key}  (keep it offline)")
    console.print(f"SuperLink certificate: {files.cert}")
    console.print(f"SuperLink key:         {files.key}")
    console.print(
        f"SuperLink: --ssl-ca-certfile {files.ca} --ssl-certfile {files.cert} "
        f"--ssl-keyfile {files.key}",
        soft_wrap=True,
    )


@app.command("node-key")
def node_key_cmd(
    *,
    out: Out,
    name: Annotated[str, typer.Option("--name", help="SuperNode name (the files' stem).")],
    overwrite: Overwrite = False,
) -> None:
    """Write a SuperNode's P-384 key pair in OpenSSH format (private key mode 0600)."""
    pair = node_key(out, name, overwrite=overwrite)
    console = Console(highlight=False)
    console.print(f"private key: {pair.private_key}  (on the device: fl.auth_private_key)")
    console.print(f"public key:  {pair.public_key}  (register it with the SuperLink)")
