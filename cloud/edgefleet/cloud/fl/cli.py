"""``edgefleet fl``: federated rounds on a SuperLink (deployment) or in Flower's simulation."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from edgefleet.cloud.fl.errors import FlRunError, FlSettingsError
from edgefleet.cloud.fl.settings import DpSettings, RunSettings
from edgefleet.cloud.fl.superlink.certs import TlsFiles
from edgefleet.cloud.fl.superlink.certs_cli import app as certs_app

if TYPE_CHECKING:
    from edgefleet.cloud.fl.apps.outcome import RunOutcome
    from edgefleet.cloud.fl.runs.origin import StartPoint
    from edgefleet.cloud.fl.secagg.settings import SecAggSettings

app = typer.Typer(
    help="Federated learning with Flower: run rounds on devices or in simulation.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(certs_app, name="certs")

Model = Annotated[
    str,
    typer.Option(help="Zoo model to train (all-dense, or a dense head on a frozen base)."),
]
Rounds = Annotated[int, typer.Option(help="Number of rounds.")]
Epochs = Annotated[int, typer.Option(help="Local epochs per round.")]
Lr = Annotated[float, typer.Option(help="Local SGD learning rate.")]
# Made absolute here: the SuperLink and ServerApp run in directories of their own.
Workdir = Annotated[Path, typer.Option(help="Run directory.", resolve_path=True)]


def _progress(console: Console, total: int) -> tuple[Progress, Any]:
    progress = Progress(
        TextColumn("[bold]round"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
    )
    task = progress.add_task("waiting for clients", total=total)

    def on_round(rec: dict[str, Any]) -> None:
        hold = ", ".join(f"{k} {v:.4f}" for k, v in rec.get("holdout", {}).items())
        desc = f"{rec['status']} ({rec['replies']} clients) {hold}".strip()
        if rec["status"] == "skipped":
            desc = f"skipped: {rec['reason']}"
        progress.update(task, advance=1, description=desc)
        progress.console.log(f"round {rec['round']}: {desc}")

    return progress, on_round


@app.command()
def start(
    *,
    model: Model,
    rounds: Rounds = 3,
    min_clients: Annotated[int, typer.Option(help="Quorum: clients a round needs.")] = 2,
    strategy: Annotated[str, typer.Option(help="fedavg|fedprox|fedmedian|fedtrimmedavg|krum")] = (
        "fedavg"
    ),
    dp: Annotated[str, typer.Option(help="DP: none|server-fixed|server-adaptive|local")] = "none",
    dp_noise: Annotated[
        float, typer.Option(help="DP noise multiplier (local: std = noise x clip per weight).")
    ] = 0.1,
    dp_clip: Annotated[float, typer.Option(help="DP clipping norm (initial, if adaptive).")] = 5.0,
    secagg: Annotated[
        bool, typer.Option(help="Secure aggregation (SecAgg+, Flower's legacy workflow).")
    ] = False,
    secagg_threshold: Annotated[
        int, typer.Option(help="SecAgg+ reconstruction threshold (0: a majority of clients).")
    ] = 0,
    epochs: Epochs = 1,
    lr: Lr = 0.05,
    round_timeout: Annotated[float, typer.Option(help="Round deadline in seconds.")] = 120.0,
    quorum_timeout: Annotated[float, typer.Option(help="Wait this long for a quorum.")] = 60.0,
    host: Annotated[str, typer.Option(help="Address the SuperLink binds.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="SuperLink port (Fleet, Control, ServerAppIo).")] = (
        9092
    ),
    workdir: Workdir = Path(".edgefleet-fl"),
    db: Annotated[str | None, typer.Option(help="Cloud store URL to register the model in.")] = (
        None
    ),
    registry: Annotated[
        Path | None, typer.Option(help="Cloud registry directory.", resolve_path=True)
    ] = None,
    key: Annotated[
        Path | None, typer.Option(help="Ed25519 key that signs the bundle.", resolve_path=True)
    ] = None,
    trusted_key: Annotated[
        list[Path] | None,
        typer.Option(help="Public keys the registry trusts (repeatable).", resolve_path=True),
    ] = None,
    margin: Annotated[float, typer.Option(help="Reject if worse than current by more.")] = 0.02,
    timeout: Annotated[float, typer.Option(help="Give up on the run after this long.")] = 3600.0,
    cloud: Annotated[
        str | None,
        typer.Option(
            help="Run it in this cloud (URL): it picks the devices serving the model, sends "
            "them start-training, registers the result."
        ),
    ] = None,
    device: Annotated[
        list[str] | None, typer.Option(help="With --cloud: train on these devices (repeatable).")
    ] = None,
    assign: Annotated[
        bool, typer.Option(help="With --cloud: assign the result back to the devices.")
    ] = False,
    every: Annotated[
        float | None, typer.Option(help="With --cloud: start a run every SECONDS (a schedule).")
    ] = None,
    tls_dir: Annotated[
        Path | None,
        typer.Option(
            help="Serve TLS with the files `edgefleet fl certs init` wrote there.",
            resolve_path=True,
        ),
    ] = None,
    node_key: Annotated[
        list[Path] | None,
        typer.Option(
            help="Enable SuperNode authentication and let in the SuperNode with this OpenSSH "
            "public key (repeatable; from `edgefleet fl certs node-key`).",
            resolve_path=True,
        ),
    ] = None,
    from_version: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="Registered version to fine-tune (default: the newest not rejected); "
            "needs --cloud or --db.",
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="EDGEFLEET_TOKEN",
            help="With --cloud: an operator API token (env EDGEFLEET_TOKEN).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run a SuperLink and a ServerApp for R rounds, then register the result."""
    if cloud is not None and (secagg or tls_dir or node_key):
        raise FlSettingsError(
            "--secagg, --tls-dir and --node-key are not offered through --cloud yet; run standalone"
        )
    if cloud is not None:
        body: dict[str, Any] = {
            "model": model, "rounds": rounds, "min_clients": min_clients, "strategy": strategy,
            "epochs": epochs, "lr": lr, "round_timeout_s": round_timeout,
            "quorum_timeout_s": quorum_timeout, "devices": device or [], "assign": assign,
            "margin": margin, "from_version": from_version,
            "dp": dp, "dp_noise": dp_noise, "dp_clip": dp_clip,
        }  # fmt: skip
        _in_cloud(cloud, body, timeout=timeout, every=every, token=token)
        return
    if every is not None or device or assign:
        raise FlSettingsError("--every, --device and --assign need --cloud URL")
    # The strategies import Flower: a missing `fl` extra fails here, before any preparation.
    from edgefleet.cloud.fl.apps.prepare import prepare_run
    from edgefleet.cloud.fl.apps.strategies import make_strategy  # noqa: F401
    from edgefleet.cloud.fl.runs.publish import publish_round
    from edgefleet.cloud.fl.secagg.settings import SecAggSettings

    if secagg and (strategy != "fedavg" or dp != "none"):
        raise FlSettingsError(
            "--secagg aggregates with FedAvg only (Flower 1.41's legacy SecAgg+ workflow): "
            "drop --strategy and --dp"
        )
    secure = SecAggSettings(reconstruction_threshold=secagg_threshold) if secagg else None
    link = _link_security(tls_dir, node_key or [])
    settings = RunSettings(
        model=model,
        rounds=rounds,
        min_clients=min_clients,
        workdir=str(workdir / "run"),
        strategy=strategy,  # type: ignore[arg-type]
        dp=DpSettings(kind=dp, noise_multiplier=dp_noise, clipping_norm=dp_clip),  # type: ignore[arg-type]
        epochs=epochs,
        lr=lr,
        round_timeout_s=round_timeout,
        quorum_timeout_s=quorum_timeout,
    )
    if (db is None) != (key is None):
        raise FlSettingsError("registering the result needs both --db and --key")
    if from_version is not None and db is None:
        raise FlSettingsError("--from needs the registry: give --db and --key (or --cloud)")
    console = Console(stderr=True)
    start = None
    if db is not None and key is not None:
        start = _start_point(
            model, db, registry or workdir / "registry", key, trusted=trusted_key or [],
            wanted=from_version,
        )  # fmt: skip
        console.log(f"start: {start.note}")
        settings = dataclasses.replace(settings, parent=start.parent)
    console.log(f"preparing {model}: trainable LiteRT model, initial weights, holdout")
    prepared = prepare_run(settings, start.weights if start is not None else None)
    hold = ", ".join(f"{k} {v:.4f}" for k, v in prepared.holdout().items())
    console.log(f"initial weights on the holdout: {hold}")
    store = None
    if db is not None:
        from edgefleet.cloud.store import open_store

        store = open_store(db)
    run_id = f"{int(time.time())}"
    try:
        progress, show = _progress(console, rounds)

        def on_round(rec: dict[str, Any]) -> None:
            show(rec)
            if store is not None:
                publish_round(store, model, run_id, rec)

        outcome = _run_here(
            settings, secure, workdir / "superlink", host=host, port=port, timeout=timeout,
            console=console, progress=progress, on_round=on_round, security=link,
        )  # fmt: skip
    finally:
        if store is not None:
            store.close()
    console.log(f"{len(outcome.aggregated)} of {rounds} rounds aggregated")
    if db is not None and key is not None:
        _register(
            outcome,
            db,
            registry or workdir / "registry",
            key,
            trusted=trusted_key or [],
            margin=margin,
        )


def _run_here(
    settings: RunSettings,
    secure: SecAggSettings | None,
    link_dir: Path,
    *,
    host: str,
    port: int,
    timeout: float,
    console: Console,
    progress: Progress,
    on_round: Callable[[dict[str, Any]], None],
    security: LinkSecurity | None = None,
) -> RunOutcome:
    """Start a SuperLink here and run on it: our apps, or the SecAgg+ apps."""
    from edgefleet.cloud.fl.apps.outcome import run_on_superlink
    from edgefleet.cloud.fl.secagg.link import SecAggLink, run_secagg
    from edgefleet.cloud.fl.superlink.process import SuperLink

    sec = security or LinkSecurity()
    need = settings.min_clients if secure is None else secure.quorum(settings)
    kind = SuperLink if secure is None else SecAggLink
    with kind(
        link_dir, host=host, port=port, tls=sec.tls, supernode_auth=bool(sec.node_keys)
    ) as link:
        for pub in sec.node_keys:
            node = link.register_node(pub, name=pub.stem)
            console.log(f"SuperNode key {pub.name} registered (node {node})")
        scheme = "TLS" if sec.tls is not None else "insecure"
        auth = ", SuperNode authentication" if sec.node_keys else ""
        console.log(f"SuperLink on {link.address} ({scheme}{auth}); waiting for {need} SuperNodes")
        with progress:
            if isinstance(link, SecAggLink) and secure is not None:
                return run_secagg(settings, secure, link, timeout=timeout, on_round=on_round)
            return run_on_superlink(settings, link, timeout=timeout, on_round=on_round)


@dataclasses.dataclass(frozen=True, slots=True)
class LinkSecurity:
    """How the standalone SuperLink is protected: TLS files and the SuperNode keys let in."""

    tls: TlsFiles | None = None
    node_keys: tuple[Path, ...] = ()


def _link_security(tls_dir: Path | None, node_keys: list[Path]) -> LinkSecurity:
    """Check ``--tls-dir`` and ``--node-key`` before anything starts."""
    from edgefleet.cloud.fl.superlink.certs import load_certs, load_node_public_key

    if node_keys and tls_dir is None:
        raise FlSettingsError(
            "--node-key needs --tls-dir: SuperNode keys over an insecure channel protect nothing"
        )
    for pub in node_keys:
        load_node_public_key(pub)  # a bad key fails here, with the reason
    tls = load_certs(tls_dir).tls_files() if tls_dir is not None else None
    return LinkSecurity(tls, tuple(node_keys))


def _in_cloud(
    url: str, body: dict[str, Any], *, timeout: float, every: float | None, token: str | None
) -> None:
    """Start the run in a cloud (``POST /v1/fl/runs``) and follow it; again every ``every`` s."""
    from edgefleet.cloud.client import CloudClient

    if every is not None and every <= 0:
        raise FlSettingsError("--every must be a positive number of seconds")
    client = CloudClient(url, token=token)
    console = Console(stderr=True)
    while True:
        began = time.monotonic()
        run = client.request("POST", "/v1/fl/runs", json_body=body)
        console.log(f"run {run['id']}: start-training sent to {', '.join(run['devices'])}")
        progress, show = _progress(console, int(body["rounds"]))
        seen = 0
        answers: dict[str, Any] = {}
        with progress:
            while run["state"] not in ("finished", "failed"):
                if time.monotonic() - began > timeout:
                    raise FlRunError(f"run {run['id']} did not end in {timeout:.0f} s")
                time.sleep(1.0)
                run = client.request("GET", f"/v1/fl/runs/{run['id']}")
                _show_answers(progress.console, run["acks"], answers)
                for rec in run["rounds"][seen:]:
                    show(rec)
                seen = len(run["rounds"])
        if run["state"] == "failed":
            raise FlRunError(f"run {run['id']} failed ({run['reason']}): {run['error']}")
        typer.echo(
            json.dumps(
                {
                    "run": run["id"],
                    "start": (run.get("start") or {}).get("note"),
                    "registered": run["registered"],
                    "rejected": run["rejected"],
                    **run["metric"],
                    "assignment": run["assignment"],
                    "acks": {d: a["status"] for d, a in run["acks"].items()},
                }
            )
        )
        if every is None:
            return
        time.sleep(max(0.0, every - (time.monotonic() - began)))


def _show_answers(console: Console, acks: dict[str, Any], shown: dict[str, Any]) -> None:
    """Log each device's answer to start-training once, and again when it changes."""
    for device, ack in sorted(acks.items()):
        if shown.get(device) == ack:
            continue
        shown[device] = ack
        said = ": ".join(str(x) for x in (ack.get("reason"), ack.get("detail")) if x)
        console.log(f"{device}: {ack.get('status')}" + (f" ({said})" if said else ""))


def _start_point(
    model: str, db: str, registry_dir: Path, key: Path, *, trusted: list[Path], wanted: str | None
) -> StartPoint:
    """Where the run starts: a registered version's float weights (see ``runs.origin``)."""
    from edgefleet.cloud.fl.runs.origin import start_point
    from edgefleet.cloud.registry import ModelRegistry
    from edgefleet.cloud.store import open_store
    from edgefleet.protocol.signing import load_private_key, load_public_key

    keys = [load_public_key(p) for p in trusted] or [load_private_key(key).public_key()]
    store = open_store(db)
    try:
        return start_point(model, ModelRegistry(registry_dir, store, keys), store, wanted)
    finally:
        store.close()


def _register(
    outcome: Any, db: str, registry_dir: Path, key: Path, *, trusted: list[Path], margin: float
) -> None:
    from edgefleet.cloud.fl.runs.handoff import hand_off
    from edgefleet.cloud.registry import ModelRegistry
    from edgefleet.cloud.store import open_store
    from edgefleet.protocol.signing import load_private_key, load_public_key

    private = load_private_key(key)
    keys = [load_public_key(p) for p in trusted] or [private.public_key()]
    store = open_store(db)
    try:
        result = hand_off(
            outcome, ModelRegistry(registry_dir, store, keys), store, private, margin=margin
        )
    finally:
        store.close()
    verdict = "REJECTED" if result.rejected else "accepted"
    typer.echo(
        json.dumps(
            {
                "registered": result.version.ref,
                result.metric: result.value,
                "baseline": result.baseline,
                "verdict": verdict,
            }
        )
    )


@app.command()
def simulate(
    *,
    model: Model,
    clients: Annotated[int, typer.Option(help="Virtual clients (SuperNodes).")] = 10,
    rounds: Rounds = 5,
    non_iid: Annotated[
        float | None, typer.Option(help="Dirichlet alpha of the label skew (omit for IID).")
    ] = None,
    epochs: Epochs = 2,
    lr: Lr = 0.1,
    cpus: Annotated[int, typer.Option(help="CPUs Ray may use.")] = 2,
    workdir: Workdir = Path(".edgefleet-fl-sim"),
    seed: Annotated[int, typer.Option(help="Seed of data, partitions and training.")] = 0,
) -> None:
    """Run the ServerApp and the device ClientApp in Flower's simulation engine."""
    from edgefleet.cloud.fl.apps.prepare import prepare_run, write_partitions
    from edgefleet.cloud.fl.apps.simulation import simulate as run_sim

    settings = RunSettings(
        model=model,
        rounds=rounds,
        min_clients=clients,
        workdir=str(workdir / "run"),
        epochs=epochs,
        lr=lr,
        seed=seed,
        data_dir=str(workdir / "data"),
    )
    console = Console(stderr=True)
    prepared = prepare_run(settings)
    sizes = write_partitions(
        workdir / "data", model, prepared.data, clients, alpha=non_iid, seed=seed
    )
    console.log(f"{clients} clients, {min(sizes)}..{max(sizes)} samples each")
    progress, show = _progress(console, rounds)
    with progress:
        outcome = run_sim(settings, clients, cpus=cpus, on_round=show)
    typer.echo(json.dumps({"rounds": [r["holdout"] for r in outcome.rounds]}))
