"""``edgefleet fl certs``: a CA and SuperLink certificate, and SuperNode authentication keys."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from edgefleet.cloud.fl.superlink.certs import CertsError, init_certs, node_key

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


@app.command()
def register(
    public_key: Annotated[Path, typer.Argument(help="The SuperNode's NAME.pub (OpenSSH).")],
    *,
    superlink: Annotated[str, typer.Option(help="HOST:PORT of the SuperLink's Control API.")],
    ca: Annotated[Path, typer.Option(help="The CA certificate that signed the SuperLink's.")],
    name: Annotated[str | None, typer.Option(help="SuperNode name shown in the node list.")] = (
        None
    ),
) -> None:
    """Register a SuperNode's public key with a running TLS SuperLink (its node id)."""
    import tempfile

    from edgefleet.cloud.fl.superlink.control import register_node

    if not ca.is_file():
        raise CertsError(f"--ca {ca} is not a file; pass the ca.crt that `certs init` wrote")
    # Flower's client keeps state under FLWR_HOME; nothing of it is needed afterwards.
    with tempfile.TemporaryDirectory(prefix="edgefleet-flwr-") as home:
        node_id = register_node(superlink, public_key, home=Path(home), ca=ca, name=name)
    typer.echo(f"registered {public_key} as SuperNode {node_id}")
