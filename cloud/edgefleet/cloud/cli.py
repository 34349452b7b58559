"""``edgefleet cloud``: run the aggregator and look at the fleet."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from edgefleet.cloud.app import Cloud, CloudConfig, Retention
from edgefleet.cloud.client import CloudClient
from edgefleet.cloud.dashboard import DashboardSettings
from edgefleet.cloud.dashboard.prometheus import SeriesLimits
from edgefleet.cloud.fl.runs.service import FlServiceSettings
from edgefleet.cloud.homeassistant import HomeAssistantSettings
from edgefleet.cloud.ingest import WorkerMode
from edgefleet.cloud.mqtt import MqttVersion
from edgefleet.cloud.tokens_cli import TokenOption
from edgefleet.cloud.tokens_cli import app as token_app
from edgefleet.cloud.trust import RecordMacPolicy
from edgefleet.protocol.errors import ConfigError

app = typer.Typer(
    help="Run the cloud aggregator and query the fleet.", no_args_is_help=True, add_completion=False
)
app.add_typer(token_app, name="token")


def parse_hostport(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (port 0 picks a free one)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"--http {value!r} is not HOST:PORT (for example 127.0.0.1:8080)")
    return host or "127.0.0.1", int(port)


def _fl_settings(
    workdir: Path, key: Path | None, superlink: str, public: str | None
) -> FlServiceSettings:
    host, port = parse_hostport(superlink)
    if key is not None and not key.is_file():
        raise ConfigError(f"--fl-signing-key: {key} does not exist")
    return FlServiceSettings(
        workdir=workdir / "fl", host=host, port=port, public_address=public, signing_key=key
    )


@app.command()
def run(
    *,
    broker: Annotated[
        str | None,
        typer.Option(help="Broker URL (mqtt://host:1883). Without it, start one here."),
    ] = None,
    db: Annotated[
        str | None,
        typer.Option(help="sqlite:///path.db or postgresql://... (default: WORKDIR/edgefleet.db)"),
    ] = None,
    http: Annotated[str, typer.Option(help="HOST:PORT of the HTTP API.")] = "127.0.0.1:8080",
    registry: Annotated[
        Path | None, typer.Option(help="Directory of the model registry.", resolve_path=True)
    ] = None,
    trusted_key: Annotated[
        list[Path] | None,
        typer.Option(
            help="Public key whose signed bundles the registry accepts (repeatable).",
            resolve_path=True,
        ),
    ] = None,
    fleet: Annotated[str | None, typer.Option(help="Only this fleet (default: all).")] = None,
    workdir: Annotated[
        Path, typer.Option(help="State directory (made absolute at start).", resolve_path=True)
    ] = Path(".edgefleet-cloud"),
    workers: Annotated[int, typer.Option(help="Ingest workers (shared subscription).")] = 1,
    worker_mode: Annotated[
        str,
        typer.Option(
            help="process: each worker decodes and writes in a child process of its own "
            "(uses more cores); thread: everything in this process."
        ),
    ] = "process",
    mqtt_version: Annotated[
        str | None,
        typer.Option(
            help="MQTT protocol to the broker: 5 or 3.1.1 (the embedded amqtt broker speaks "
            "3.1.1 only). Default: 3.1.1 for a broker started here that is amqtt, else 5."
        ),
    ] = None,
    node_id: Annotated[str, typer.Option(help="The cloud's id on the wire.")] = "cloud",
    public_url: Annotated[
        str | None, typer.Option(help="Base URL devices download bundles from.")
    ] = None,
    retention_days: Annotated[
        float, typer.Option(help="Days to keep raw telemetry (0 keeps it forever).")
    ] = 30.0,
    ready_file: Annotated[
        Path | None,
        typer.Option(help="Write the URLs here as JSON once ready (for tests).", resolve_path=True),
    ] = None,
    homeassistant_fleet: Annotated[
        list[str] | None,
        typer.Option(help="Publish Home Assistant MQTT discovery for this fleet (repeatable)."),
    ] = None,
    homeassistant_prefix: Annotated[
        str, typer.Option(help="Home Assistant's discovery prefix.")
    ] = "homeassistant",
    dashboard: Annotated[bool, typer.Option(help="Serve the web dashboard at /.")] = True,
    metrics_max_devices: Annotated[
        int,
        typer.Option(
            help="Devices with per-device series at /metrics (the first by id; 0: fleet-level "
            "series only). Each adds about 12 series to Prometheus."
        ),
    ] = SeriesLimits().max_devices,
    fl_signing_key: Annotated[
        Path | None,
        typer.Option(
            help="Ed25519 key that signs federated results (POST /v1/fl/runs).",
            resolve_path=True,
        ),
    ] = None,
    fl_superlink: Annotated[
        str, typer.Option(help="HOST:PORT federated runs' SuperLink binds (port 0: a free one).")
    ] = "127.0.0.1:0",
    fl_public_address: Annotated[
        str | None, typer.Option(help="HOST:PORT devices dial for the SuperLink (default: bound).")
    ] = None,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            help="A Host name the HTTP API answers to besides 127.0.0.1/localhost/::1 "
            "(repeatable; *.example.com for subdomains). Others get 400 bad-host.",
        ),
    ] = None,
    broker_dir: Annotated[
        Path | None,
        typer.Option(
            help="The production broker's directory (`cloud broker-config --out`): provisioning "
            "enrols devices there, revocation cuts them off.",
            resolve_path=True,
        ),
    ] = None,
    command_key: Annotated[
        Path | None,
        typer.Option(
            help="The command-signing key (PEM, Ed25519); default WORKDIR/keys/command.key, "
            "made at first start.",
            resolve_path=True,
        ),
    ] = None,
    record_macs: Annotated[
        str,
        typer.Option(
            help="when-registered (laptop default: devices without a record key are accepted "
            "unauthenticated) or required (their records are quarantined)."
        ),
    ] = "when-registered",
    device_broker_url: Annotated[
        str | None,
        typer.Option(
            help="The broker URL provisioned devices dial (e.g. mqtts://broker.example:8883); "
            "default: the cloud's own broker URL."
        ),
    ] = None,
) -> None:
    """Run ingest, the registry, the HTTP API and the dashboard until interrupted."""
    from edgefleet.cloud.identity.service import IdentitySettings

    host, port = parse_hostport(http)
    config = CloudConfig(
        workdir=workdir,
        broker_url=broker,
        db_url=db,
        http_host=host,
        http_port=port,
        registry_dir=registry,
        trusted_keys=tuple(trusted_key or ()),
        fleet=fleet,
        node_id=node_id,
        workers=workers,
        worker_mode=_worker_mode(worker_mode),
        mqtt_version=_mqtt_version(mqtt_version),
        public_url=public_url,
        retention=Retention(raw_days=retention_days or None),
        homeassistant=HomeAssistantSettings(
            fleets=tuple(homeassistant_fleet), discovery_prefix=homeassistant_prefix
        )
        if homeassistant_fleet
        else None,
        dashboard=DashboardSettings() if dashboard else None,
        series_limits=SeriesLimits(max_devices=metrics_max_devices),
        fl=_fl_settings(workdir, fl_signing_key, fl_superlink, fl_public_address),
        allowed_hosts=tuple(allowed_host or ()),
        broker_dir=broker_dir,
        command_key=command_key,
        record_macs=_record_macs(record_macs),
        identity=IdentitySettings(
            directory=workdir / "identity", device_broker_url=device_broker_url
        )
        if device_broker_url
        else None,
    )
    console = Console(stderr=True)
    first_start = not (workdir / "auth.db").exists()
    cloud = Cloud(config)

    def _terminate(_sig: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    with cloud:
        info = {"http_url": cloud.http_url, "broker_url": cloud.broker_url, "db_url": cloud.db_url}
        if ready_file is not None:
            tmp = ready_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(info))
            tmp.replace(ready_file)
        console.print(
            f"edgefleet cloud: dashboard {cloud.http_url}/  API {cloud.http_url}/docs  "
            f"broker {cloud.broker_url}  db {cloud.db_url}"
        )
        _print_admin_token(console, cloud, workdir, first_start=first_start)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            console.print("stopping")


def _record_macs(value: str) -> RecordMacPolicy:
    if value not in ("when-registered", "required"):
        raise ConfigError(f"--record-macs {value!r}: use when-registered or required")
    return value  # type: ignore[return-value]


def _print_admin_token(console: Console, cloud: Cloud, workdir: Path, *, first_start: bool) -> None:
    path = workdir / "admin.token"
    if first_start and cloud.admin_token:
        # Shown once, at the start that made it; afterwards only where it is kept.
        console.print(f"API admin token (shown once; also in {path}, mode 0600):")
        console.print(f"  {cloud.admin_token}", highlight=False, soft_wrap=True)
    else:
        console.print(f"API admin token: {path} (`edgefleet cloud token create` for more)")
    console.print(f"dashboard login: {cloud.http_url}/login with an API token")


def _worker_mode(value: str) -> WorkerMode:
    if value == "process":
        return "process"
    if value == "thread":
        return "thread"
    raise ConfigError(f"--worker-mode {value!r} is not 'process' or 'thread'")


def _mqtt_version(value: str | None) -> MqttVersion | None:
    if value is None:
        return None
    if value == "5":
        return "5"
    if value in ("3.1.1", "311"):
        return "3.1.1"
    raise ConfigError(f"--mqtt-version {value!r} is not 5 or 3.1.1")


def _ago(ts: Any) -> str:
    if not ts:
        return "-"
    s = max(0.0, time.time() - float(ts))
    return f"{s:.0f}s ago" if s < 120 else f"{s / 60:.0f}m ago"


@app.command()
def devices(
    cloud: Annotated[
        str, typer.Option(help="Base URL of the cloud API.")
    ] = "http://127.0.0.1:8080",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    token: TokenOption = None,
) -> None:
    """List devices: online, last seen, model, health, outbox."""
    rows = CloudClient(cloud, token=token).devices()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"{len(rows)} devices")
    for col in ("device", "fleet", "state", "last seen", "model", "agent", "cpu %", "outbox"):
        table.add_column(col)
    for d in rows:
        model = f"{d['model']}@{d['model_version']}" if d.get("model") else "-"
        state = (
            "[green]online[/]" if d["online"] else f"[red]offline[/] {d.get('status_reason') or ''}"
        )
        cpu = "-" if d.get("cpu_percent") is None else f"{d['cpu_percent']:.0f}"
        outbox = (
            "-"
            if d.get("outbox_depth") is None
            else f"{d['outbox_depth']} ({d.get('outbox_drops') or 0} dropped)"
        )
        table.add_row(
            d["device_id"], d["fleet"], state, _ago(d["last_seen"]), model,
            d.get("agent_version") or "-", cpu, outbox,
        )  # fmt: skip
    Console().print(table)


@app.command("broker-config")
def broker_config(
    *,
    out: Annotated[
        Path,
        typer.Option(
            help="Directory to write mosquitto.conf and its files into.", resolve_path=True
        ),
    ],
    workdir: Annotated[
        Path,
        typer.Option(
            help="The cloud's state directory (its CA is WORKDIR/identity/ca).", resolve_path=True
        ),
    ] = Path(".edgefleet-cloud"),
    hostname: Annotated[
        list[str] | None,
        typer.Option(help="Name or IP devices dial the broker by (repeatable; server cert SANs)."),
    ] = None,
    tls_port: Annotated[int, typer.Option(help="Port of the devices' TLS listener.")] = 8883,
    local_port: Annotated[
        int, typer.Option(help="Loopback port of the cloud's own identities.")
    ] = 1884,
    backend: Annotated[
        str, typer.Option(help="auto (dynsec if installed), dynsec or files.")
    ] = "auto",
    anonymous_loopback: Annotated[
        bool, typer.Option(help="Also let anonymous clients in, on the loopback listener only.")
    ] = False,
    db: Annotated[
        str | None,
        typer.Option(help="Store whose devices to enrol (default: WORKDIR/edgefleet.db)."),
    ] = None,
    user: Annotated[str | None, typer.Option(help="Unix user Mosquitto runs as.")] = None,
) -> None:
    """Write Mosquitto's production configuration: TLS, certificate identities, per-device ACLs."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from edgefleet.cloud.broker.production import write_production_config
    from edgefleet.cloud.identity.ca import ProjectCA, write_private
    from edgefleet.cloud.store import open_store

    if backend not in ("auto", "dynsec", "files"):
        raise ConfigError(f"--backend {backend!r} is not auto, dynsec or files")
    workdir = workdir.expanduser().resolve()
    ca = ProjectCA.load_or_create(workdir / "identity" / "ca")
    store = open_store(db or f"sqlite:///{workdir / 'edgefleet.db'}")
    try:
        devices = [(d.device_id, d.fleet) for d in store.devices()]
    finally:
        store.close()
    revoked = ca.directory / "crl.pem"
    crl = revoked.read_bytes() if revoked.is_file() else ca.crl_pem([])
    server_key = ec.generate_private_key(ec.SECP256R1())
    cert = ca.issue_server_cert(hostname or ["localhost", "127.0.0.1"], server_key)
    staging = out.expanduser().resolve() / ".server"
    staging.mkdir(parents=True, exist_ok=True)
    write_private(staging / "server.pem", cert)
    write_private(
        staging / "server.key",
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    cfg = write_production_config(
        out,
        ca=ca.cert_path,
        cert=staging / "server.pem",
        key=staging / "server.key",
        crl=crl,
        tls_port=tls_port,
        local_port=local_port,
        anonymous_loopback=anonymous_loopback,
        backend=backend,  # type: ignore[arg-type]
        devices=devices,
        user=user,
    )
    for leftover in staging.iterdir():
        leftover.unlink()
    staging.rmdir()
    console = Console(stderr=True)
    console.print(
        f"wrote {cfg.config_path} ({cfg.backend} backend, {len(devices)} devices enrolled)\n"
        f"start it:  mosquitto -d -c {cfg.config_path}\n"
        f"then:      edgefleet cloud run --broker '{cfg.local_url()}'  "
        f"(credentials in {cfg.directory / 'credentials.json'})"
    )
    if anonymous_loopback:
        console.print(
            f"[yellow]anonymous MQTT clients are allowed on 127.0.0.1:{local_port}[/yellow]"
        )
