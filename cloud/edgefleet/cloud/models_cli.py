"""``edgefleet models push|assign|delete``: the registry commands (merged into ``models``)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from edgefleet.cloud.assignments import parse_ref
from edgefleet.cloud.client import CloudClient
from edgefleet.cloud.errors import CloudError
from edgefleet.cloud.tokens_cli import TokenOption
from edgefleet.protocol.errors import BundleError, ConfigError

# The states a target ends in; "timeout" is this command's own: no answer within --timeout.
FINAL = frozenset({"succeeded", "failed", "refused"})
_STYLE = {
    "succeeded": "green",
    "refused": "red",
    "failed": "red",
    "timeout": "yellow",
    "received": "cyan",
}


class AssignmentFailed(CloudError):
    """At least one target of a waited-for assignment failed or did not answer in time."""

    reason = "assignment-failed"
    exit_code = 1


class AssignmentRefused(BundleError):
    """At least one target refused the assigned bundle (and none failed)."""

    reason = "assignment-refused"


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
    token: TokenOption = None,
) -> None:
    """Upload a signed bundle; the cloud refuses it unless a trusted key signed it."""
    if not bundle.is_file():
        raise ConfigError(f"{bundle} is not a file: pack the bundle first (a .tar.gz)")
    model = CloudClient(cloud, token=token).push(bundle.read_bytes())
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
    allow_task_change: Annotated[
        bool,
        typer.Option(help="Repurpose the devices: another task or label set than they serve."),
    ] = False,
    rollback: Annotated[
        bool,
        typer.Option(
            help="Assign an older version on purpose (agents refuse a downgrade without it)."
        ),
    ] = False,
    wait: Annotated[
        bool,
        typer.Option(
            help="Wait for every target's final answer; exit non-zero unless all succeed."
        ),
    ] = False,
    timeout: Annotated[
        float, typer.Option(help="With --wait: seconds to wait for the answers.", min=0.1)
    ] = 300.0,
    cloud: CloudOption = "http://127.0.0.1:8080",
    token: TokenOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the assignment as JSON.")] = False,
) -> None:
    """Send a model version to devices and show each target's state."""
    if sum([bool(device), tag is not None, all_]) != 1:
        raise ConfigError("give exactly one of --device ID (repeatable), --tag T or --all")
    selector: dict[str, object] = (
        {"devices": device} if device else {"tag": tag} if tag is not None else {"all": True}
    )
    if allow_task_change:
        selector["allow_task_change"] = True
    if rollback:
        selector["rollback"] = True
    client = CloudClient(cloud, token=token)
    a = client.assign(ref, **selector)
    console = Console()
    if wait:
        a = wait_for_targets(client, a, timeout, console, quiet=as_json)
    if as_json:
        typer.echo(json.dumps(a, indent=2))
    else:
        _show(console, a)
    if wait:
        _verdict(a)


def _show(console: Console, a: dict[str, Any]) -> None:
    console.print(
        f"assignment {a['id']}: {a['model']}@{a['version']} -> {len(a['targets'])} device(s)"
    )
    for t in a["targets"]:
        why = f"  {t['reason']}: {t['detail']}" if t.get("reason") else ""
        note = f"  ({t['detail']})" if not why and t.get("detail") else ""
        console.print(f"  {t['device_id']}: {t['state']}{why}{note}", highlight=False)


def _table(a: dict[str, Any], started: float, timeout: float) -> Table:
    done = sum(t["state"] in FINAL for t in a["targets"])
    left = max(0.0, timeout - (time.monotonic() - started))
    table = Table(
        title=f"{a['model']}@{a['version']}: {done} of {len(a['targets'])} answered "
        f"({left:.0f} s left)"
    )
    for col in ("device", "state", "reason"):
        table.add_column(col)
    for t in a["targets"]:
        style = _STYLE.get(t["state"], "")
        state = f"[{style}]{t['state']}[/]" if style else t["state"]
        table.add_row(t["device_id"], state, t.get("reason") or "")
    return table


def wait_for_targets(
    client: CloudClient,
    a: dict[str, Any],
    timeout: float,
    console: Console,
    *,
    quiet: bool = False,
    poll_s: float = 0.25,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Poll the assignment until every target answered; targets still open become "timeout".

    On a terminal it shows a live table; otherwise (a pipe, a log) one line per state change,
    so a CI log shows the progress too. ``quiet`` shows nothing (``--json``).
    """
    started = clock()
    seen: dict[str, str] = {}

    def report(doc: dict[str, Any]) -> None:
        for t in doc["targets"]:
            if seen.get(t["device_id"]) != t["state"]:
                seen[t["device_id"]] = t["state"]
                if not quiet and not console.is_terminal:
                    why = f" ({t['reason']})" if t.get("reason") else ""
                    console.print(f"{t['device_id']}: {t['state']}{why}", highlight=False)

    def finished(doc: dict[str, Any]) -> bool:
        return all(t["state"] in FINAL for t in doc["targets"])

    live = Live(console=console, auto_refresh=False, transient=True) if not quiet else None
    try:
        if live is not None and console.is_terminal:
            live.start()
        while True:
            report(a)
            if live is not None and console.is_terminal:
                live.update(_table(a, started, timeout), refresh=True)
            if finished(a) or clock() - started >= timeout:
                break
            time.sleep(poll_s)
            a = client.assignment(a["id"])
    finally:
        if live is not None and console.is_terminal:
            live.stop()
    targets = [
        t if t["state"] in FINAL else {**t, "state": "timeout", "reason": "timeout",
                                        "detail": f"no final answer within {timeout:g} s "
                                        f"(last state: {t['state']})"}
        for t in a["targets"]
    ]  # fmt: skip
    return {**a, "targets": targets}


def _verdict(a: dict[str, Any]) -> None:
    """Raise unless every target succeeded: failures and timeouts exit 1, refusals 5."""
    by_state: dict[str, list[str]] = {}
    for t in a["targets"]:
        by_state.setdefault(t["state"], []).append(t["device_id"])
    bad = {s: ids for s, ids in by_state.items() if s != "succeeded"}
    if not bad:
        return
    summary = "; ".join(f"{s}: {', '.join(ids)}" for s, ids in sorted(bad.items()))
    message = f"{a['model']}@{a['version']} did not succeed everywhere ({summary})"
    if "failed" in bad or "timeout" in bad:
        raise AssignmentFailed(message)
    raise AssignmentRefused(message)


@app.command()
def delete(
    ref: Annotated[str, typer.Argument(help="NAME@VERSION of a registered model.")],
    cloud: CloudOption = "http://127.0.0.1:8080",
    token: TokenOption = None,
) -> None:
    """Unregister a version and its archive; refused while a device serves it or it is in flight."""
    name, version = parse_ref(ref)
    model = CloudClient(cloud, token=token).delete_model(name, version)
    Console().print(
        f"deleted {model['name']}@{model['version']} (sha256 {model['sha256'][:16]}...)"
    )
