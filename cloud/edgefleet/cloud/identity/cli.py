"""``edgefleet device``: claim tokens for provisioning, the identities issued, revocation."""

from __future__ import annotations

import datetime as dt
import re
import time
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from edgefleet.cloud.client import CloudClient, _seg
from edgefleet.protocol.errors import ConfigError

app = typer.Typer(
    help="Provision, list and revoke device identities.",
    no_args_is_help=True,
    add_completion=False,
)

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}

CloudOpt = Annotated[str, typer.Option(help="Base URL of the cloud API.")]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        envvar="EDGEFLEET_TOKEN",
        help="An admin API token (`edgefleet cloud token create --role admin`).",
    ),
]


def parse_duration(text: str) -> float:
    """Seconds in ``15m``, ``2h``, ``1d``, ``90s`` or a bare number of seconds."""
    m = _DURATION.fullmatch(text.strip().lower())
    if m is None:
        raise ConfigError(f"--ttl {text!r} is not a duration: write 15m, 2h, 1d or 90s")
    return float(m.group(1)) * _UNIT[m.group(2)]


def _client(cloud: str, token: str | None) -> CloudClient:
    return CloudClient(cloud, token=token)


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@app.command("claim-token")
def claim_token(
    fleet: Annotated[str, typer.Option(help="The fleet devices claiming it join.")],
    *,
    tag: Annotated[
        list[str] | None, typer.Option("--tag", help="A tag the devices get (repeatable).")
    ] = None,
    uses: Annotated[int, typer.Option(min=1, max=10_000, help="How many devices.")] = 1,
    ttl: Annotated[str, typer.Option(help="How long it is valid: 15m, 2h, 1d.")] = "15m",
    cloud: CloudOpt = "http://127.0.0.1:8080",
    token: TokenOpt = None,
) -> None:
    """Make a claim token for `edgefleet agent provision` (printed once, stored hashed)."""
    result: dict[str, Any] = _client(cloud, token).request(
        "POST",
        "/v1/claim-tokens",
        json_body={"fleet": fleet, "tags": tag or [], "uses": uses, "ttl_s": parse_duration(ttl)},
    )
    typer.echo(result["token"])
    left = result["expires_at"] - time.time()
    Console(stderr=True).print(
        f"claim token for fleet {result['fleet']}"
        f"{' tags ' + ','.join(result['tags']) if result['tags'] else ''}: "
        f"{result['uses']} use(s), expires in {left / 60:.0f} min ({_when(result['expires_at'])}); "
        f"on the device: edgefleet agent provision --cloud {cloud} --token <token>",
        highlight=False,
        soft_wrap=True,
    )


@app.command("list")
def list_cmd(
    fleet: Annotated[str | None, typer.Option(help="Only this fleet.")] = None,
    all_: Annotated[
        bool, typer.Option("--all", help="Also superseded and revoked certificates.")
    ] = False,
    cloud: CloudOpt = "http://127.0.0.1:8080",
    token: TokenOpt = None,
) -> None:
    """Device identities: serial, expiry and state of each certificate."""
    query = f"?fleet={_seg(fleet)}" if fleet else ""
    rows: list[dict[str, Any]] = _client(cloud, token).request("GET", f"/v1/identities{query}")
    table = Table("device", "fleet", "serial", "not after", "state")
    for r in rows:
        if all_ or r["state"] != "superseded":
            table.add_row(
                r["device_id"], r["fleet"], r["serial"], _when(r["not_after"]), r["state"]
            )
    Console().print(table)


@app.command()
def revoke(
    device_id: Annotated[str, typer.Argument(help="The device to cut off.")],
    cloud: CloudOpt = "http://127.0.0.1:8080",
    token: TokenOpt = None,
) -> None:
    """Revoke a device: its certificates (CRL), API tokens and broker access, at once."""
    r: dict[str, Any] = _client(cloud, token).request(
        "POST", f"/v1/identities/{_seg(device_id)}/revoke"
    )
    broker = "broker access cut" if r["broker"] else "no broker authority configured"
    Console().print(
        f"revoked {r['device_id']}: {len(r['certificates'])} certificate(s), "
        f"{r['tokens']} API token(s); {broker}",
        highlight=False,
    )
