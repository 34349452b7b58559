"""``edgefleet cloud token create|list|revoke``, and the ``--token`` option of API commands.

Beside the auth package, not in it: the client imports auth's errors, and this imports the client.
"""

from __future__ import annotations

import datetime as dt
import json
import urllib.parse
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from edgefleet.cloud.auth.roles import Role
from edgefleet.cloud.auth.tokens import TokenStore
from edgefleet.cloud.client import CloudClient
from edgefleet.protocol.errors import ConfigError

# Every command that talks to a cloud's API takes this (docs/cli.md).
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="EDGEFLEET_TOKEN",
        help="API token (env EDGEFLEET_TOKEN; `edgefleet cloud token create`; the first admin "
        "token is in the cloud's WORKDIR/admin.token).",
        show_default=False,
    ),
]
_CloudOpt = Annotated[str, typer.Option(help="Base URL of the cloud API (used without --workdir).")]
_WorkdirOpt = Annotated[
    Path | None,
    typer.Option(
        help="Work on this cloud's WORKDIR/auth.db directly (on the cloud's host; no token "
        "needed, the file's permissions are the check). Without it: over the API with --token.",
        resolve_path=True,
    ),
]

app = typer.Typer(
    help="API tokens: create (shown once), list, revoke.",
    no_args_is_help=True,
    add_completion=False,
)


def _store(workdir: Path) -> TokenStore:
    db = workdir / "auth.db"
    if not db.is_file():
        raise ConfigError(
            f"{db} does not exist: give the --workdir of a cloud that has started once"
        )
    return TokenStore(db)


@app.command()
def create(
    name: Annotated[str, typer.Option(help="Who or what uses the token.")],
    role: Annotated[str, typer.Option(help="viewer, operator or admin.")] = "viewer",
    workdir: _WorkdirOpt = None,
    cloud: _CloudOpt = "http://127.0.0.1:8080",
    token: TokenOption = None,
) -> None:
    """Make an API token; prints its secret once (only its hash is kept)."""
    wanted = Role.parse(role)
    if workdir is not None:
        store = _store(workdir)
        try:
            secret, info = store.create(name, wanted)
        finally:
            store.close()
        record: dict[str, Any] = info.to_json()
    else:
        answer = CloudClient(cloud, token=token).request(
            "POST", "/v1/tokens", json_body={"name": name, "role": wanted.value}
        )
        secret = str(answer.pop("token"))
        record = answer
    Console(stderr=True).print(
        f"token {record['id']} ({record['name']}, {record['role']}): shown once, keep it secret"
    )
    typer.echo(secret)


@app.command("list")
def list_tokens(
    workdir: _WorkdirOpt = None,
    cloud: _CloudOpt = "http://127.0.0.1:8080",
    token: TokenOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Every token: id, name, role, kind, created, last used, revoked (never a secret)."""
    if workdir is not None:
        store = _store(workdir)
        try:
            rows: list[dict[str, Any]] = [t.to_json() for t in store.list()]
        finally:
            store.close()
    else:
        rows = CloudClient(cloud, token=token).request("GET", "/v1/tokens")
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"{len(rows)} tokens")
    for col in ("id", "name", "role", "kind", "created", "last used", "revoked"):
        table.add_column(col)
    for t in rows:
        table.add_row(
            str(t["id"]), str(t["name"]), str(t["role"]), str(t["kind"]),
            _when(t["created_at"]), _when(t["last_used_at"]), _when(t["revoked_at"]),
        )  # fmt: skip
    Console().print(table)


@app.command()
def revoke(
    token_id: Annotated[str, typer.Argument(help="The token's id (`token list`).")],
    workdir: _WorkdirOpt = None,
    cloud: _CloudOpt = "http://127.0.0.1:8080",
    token: TokenOption = None,
) -> None:
    """Revoke a token: its next request gets 401 and its dashboard sessions end."""
    if workdir is not None:
        store = _store(workdir)
        try:
            record = store.revoke(token_id).to_json()
        finally:
            store.close()
    else:
        record = CloudClient(cloud, token=token).request(
            "DELETE", f"/v1/tokens/{urllib.parse.quote(token_id, safe='')}"
        )
    Console().print(f"revoked token {record['id']} ({record['name']}, {record['role']})")


def _when(ts: Any) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(float(ts), tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
