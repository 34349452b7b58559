"""The whole cloud in one process: broker (optional), store, ingest workers, registry, HTTP API."""

from __future__ import annotations

import logging
import secrets
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Self

import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgefleet.cloud.api import CloudServices, create_app
from edgefleet.cloud.assignments import Assigner
from edgefleet.cloud.auth import Authenticator, DownloadGrants, Role, TokenStore
from edgefleet.cloud.auth.host import LOOPBACK_HOSTS
from edgefleet.cloud.broker import (
    BrokerProcess,
    EmbeddedBroker,
    MosquittoBroker,
    free_port,
    mosquitto_available,
)
from edgefleet.cloud.commandsigner import (
    CommandSigner,
    ensure_command_key,
    key_paths,
    write_public_key,
)
from edgefleet.cloud.dashboard import Dashboard, DashboardSettings, mount_dashboard
from edgefleet.cloud.dashboard.prometheus import SeriesLimits, register_device_metrics
from edgefleet.cloud.errors import CloudError
from edgefleet.cloud.fl.runs.roundsource import StoreRounds
from edgefleet.cloud.fl.runs.service import FlService, FlServiceSettings
from edgefleet.cloud.homeassistant import HomeAssistantPublisher, HomeAssistantSettings
from edgefleet.cloud.identity.service import AuthTokens, IdentitySettings, Provisioner
from edgefleet.cloud.ingest import IngestSettings, IngestWorker, LoopKind, WorkerMode
from edgefleet.cloud.metrics import CloudMetrics
from edgefleet.cloud.mqtt import MqttVersion
from edgefleet.cloud.node import CloudNode
from edgefleet.cloud.publisher import CommandPublisher
from edgefleet.cloud.registry import ModelRegistry
from edgefleet.cloud.store import open_store
from edgefleet.cloud.store.base import TelemetryStore
from edgefleet.cloud.trust import RecordKeys, RecordMacPolicy
from edgefleet.protocol.errors import ConfigError
from edgefleet.protocol.signing import load_public_key

log = logging.getLogger(__name__)

_SQLITE = "sqlite:///"


def absolute(path: Path | str) -> Path:
    """``path`` with ``~`` expanded, made absolute against the current directory."""
    return Path(path).expanduser().resolve()


def absolute_sqlite_url(url: str) -> str:
    """A ``sqlite:///relative.db`` URL made absolute; any other URL as it is."""
    if not url.startswith(_SQLITE) or url == _SQLITE or url.startswith(_SQLITE + "/"):
        return url
    path = url.removeprefix(_SQLITE)
    return url if path == ":memory:" else f"{_SQLITE}{absolute(path)}"


@dataclass(frozen=True, slots=True)
class Retention:
    """How long raw telemetry is kept (None keeps it forever) and how often to prune.

    ``every_s`` <= 0 turns the periodic pruning off (``Cloud.prune()`` still applies it).
    """

    raw_days: float | None = 30.0
    quarantine_days: float | None = 7.0
    every_s: float = 3600.0


@dataclass(frozen=True, slots=True)
class CloudConfig:
    """Everything ``edgefleet cloud run`` takes; defaults give a laptop setup in ``workdir``."""

    workdir: Path
    broker_url: str | None = None
    db_url: str | None = None
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    registry_dir: Path | None = None
    trusted_keys: tuple[Path, ...] = ()
    fleet: str | None = None
    node_id: str = "cloud"
    workers: int = 1
    worker_mode: WorkerMode = "process"
    mqtt_version: MqttVersion | None = None
    public_url: str | None = None
    loop: LoopKind = "drain"
    batch_max_records: int = 2000
    batch_max_delay_s: float = 0.05
    throttle_rate: float = 500.0
    throttle_burst: float = 5000.0
    retention: Retention = field(default_factory=Retention)
    # Opt-in Home Assistant MQTT discovery for these fleets (docs/dashboards.md).
    homeassistant: HomeAssistantSettings | None = None
    # The web dashboard at `/` (None turns it off).
    dashboard: DashboardSettings | None = field(default_factory=DashboardSettings)
    # Caps on the per-device Prometheus series at /metrics (served with or without dashboard).
    series_limits: SeriesLimits = field(default_factory=SeriesLimits)
    # Federated runs from the API (`/v1/fl/runs`); None: defaults under workdir/fl, results
    # not registered until a signing key is given (docs/federated.md).
    fl: FlServiceSettings | None = None
    # Device identities (CA, claim tokens, provisioning); None: defaults under workdir/identity.
    identity: IdentitySettings | None = None
    # The directory `edgefleet cloud broker-config` wrote: provisioning enrols devices with
    # that broker and revocation cuts them off there (None: no broker-side identity).
    broker_dir: Path | None = None
    # Host names the HTTP API answers to besides the loopback ones (`--allowed-host`).
    allowed_hosts: tuple[str, ...] = ()
    # Largest `POST /v1/models` body (413 over it).
    max_upload_bytes: int = 64 * 1024 * 1024
    # The command-signing key (PEM, Ed25519); None: <workdir>/keys/command.key, made at first
    # start. Agents list its public half in `[trust] command_keys`.
    command_key: Path | None = None
    # Devices without a registered record key: accepted unauthenticated ("when-registered",
    # the laptop default, said at start) or quarantined ("required").
    record_macs: RecordMacPolicy = "when-registered"

    def __post_init__(self) -> None:
        # Children (Mosquitto, Flower's ServerApp, ingest workers) run in other directories:
        # a relative path is made absolute once, here, against the caller's current directory.
        set_ = object.__setattr__
        set_(self, "workdir", absolute(self.workdir))
        if self.registry_dir is not None:
            set_(self, "registry_dir", absolute(self.registry_dir))
        if self.command_key is not None:
            set_(self, "command_key", absolute(self.command_key))
        set_(self, "trusted_keys", tuple(absolute(p) for p in self.trusted_keys))
        if self.db_url is not None:
            set_(self, "db_url", absolute_sqlite_url(self.db_url))
        if self.fl is not None:
            key = self.fl.signing_key
            set_(
                self,
                "fl",
                replace(
                    self.fl,
                    workdir=absolute(self.fl.workdir),
                    signing_key=None if key is None else absolute(key),
                ),
            )
        if self.workers < 1:
            raise ConfigError("--workers must be at least 1")
        if self.worker_mode not in ("process", "thread"):
            raise ConfigError(f"--worker-mode {self.worker_mode!r} is not 'process' or 'thread'")
        if not 0 <= self.http_port < 65536:
            raise ConfigError(f"HTTP port {self.http_port} is out of range")


class Cloud:
    """Start and stop every cloud part in this process.

    ``Cloud(CloudConfig(workdir=tmp, http_port=0)).start()`` gives a running cloud on free
    ports with its own broker; read :attr:`http_url` and :attr:`broker_url`. It is also a
    context manager. Tests of the agent start it this way or as a subprocess
    (:class:`~edgefleet.cloud.launcher.CloudProcess`).
    """

    def __init__(self, config: CloudConfig) -> None:
        self.config = config
        self.node = CloudNode(config.node_id)
        self.metrics = CloudMetrics()
        self.broker: BrokerProcess | None = None
        self.store: TelemetryStore | None = None
        self.workers: list[IngestWorker] = []
        self.publisher: CommandPublisher | None = None
        self.registry: ModelRegistry | None = None
        self.dashboard: Dashboard | None = None
        self.homeassistant: HomeAssistantPublisher | None = None
        self.fl: FlService | None = None
        self.identity: Provisioner | None = None
        self.tokens: TokenStore | None = None
        # The first admin token, when this start created it (also in workdir/admin.token).
        self.admin_token: str | None = None
        self._server: uvicorn.Server | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self.http_port = config.http_port
        self._broker_url = config.broker_url

    @property
    def broker_url(self) -> str:
        """The broker devices and workers connect to."""
        if self._broker_url is None:
            raise CloudError("the cloud is not started")
        return self._broker_url

    @property
    def http_url(self) -> str:
        """Base URL of the HTTP API."""
        host = self.config.http_host
        host = "127.0.0.1" if host in ("0.0.0.0", "") else host  # noqa: S104 - a bind address
        return f"http://{host}:{self.http_port}"

    @property
    def db_url(self) -> str:
        """The store's URL."""
        return self.config.db_url or f"sqlite:///{self.config.workdir / 'edgefleet.db'}"

    def _start_broker(self) -> str:
        workdir = self.config.workdir / "broker"
        self.broker = (
            MosquittoBroker(workdir) if mosquitto_available() else EmbeddedBroker(workdir)
        ).start(timeout=30)
        return self.broker.url

    def _mqtt_version(self) -> MqttVersion:
        if self.config.mqtt_version is not None:
            return self.config.mqtt_version
        # amqtt speaks MQTT 3.1.1 only (no shared subscriptions).
        return "3.1.1" if isinstance(self.broker, EmbeddedBroker) else "5"

    def start(self, timeout: float = 30.0) -> Self:
        """Start everything; return once the API answers and ingest is subscribed."""
        cfg = self.config
        cfg.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self._start(cfg, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, cfg: CloudConfig, timeout: float) -> None:
        if self._broker_url is None:
            self._broker_url = self._start_broker()
        version = self._mqtt_version()
        if cfg.workers > 1 and version != "5":
            raise ConfigError(
                "several ingest workers need an MQTT v5 broker (shared subscriptions)"
            )
        keys: list[Ed25519PublicKey] = [load_public_key(p) for p in cfg.trusted_keys]
        self.store = open_store(self.db_url)
        self.registry = ModelRegistry(
            cfg.registry_dir or cfg.workdir / "registry", self.store, keys
        )
        command_key = self._command_key(cfg)
        base = IngestSettings(
            command_key=str(command_key),
            record_macs=cfg.record_macs,
            broker_url=self.broker_url,
            fleet=cfg.fleet,
            mqtt_version=version,
            batch_max_records=cfg.batch_max_records,
            batch_max_delay_s=cfg.batch_max_delay_s,
            loop=cfg.loop,
            mode=cfg.worker_mode,
            throttle_rate=cfg.throttle_rate,
            throttle_burst=cfg.throttle_burst,
        )
        group = f"{cfg.node_id}-ingest" if cfg.workers > 1 else None
        for i in range(cfg.workers):
            settings = replace(base, client_id=f"{cfg.node_id}-ingest-{i}", share_group=group)
            # One store connection per worker, another for the API: SQLite's WAL lets the
            # API read while a worker writes.
            self.workers.append(
                IngestWorker(settings, open_store(self.db_url), self.node, self.metrics)
            )
        for w in self.workers:
            w.start(timeout)
        self.publisher = CommandPublisher(
            self.broker_url,
            f"{cfg.node_id}-cmd-{secrets.token_hex(3)}",
            version=version,
            signer=CommandSigner(command_key),
            record_keys=RecordKeys(self.store),
        ).start(timeout)
        if self.http_port == 0:
            self.http_port = free_port(cfg.http_host or "127.0.0.1")
        auth = self._authenticator(cfg, self.store)
        assigner = Assigner(
            self.store,
            self.registry,
            self.publisher,
            self.node,
            cfg.public_url or self.http_url,
            grants=auth.grants,
        )
        store = self.store
        self.metrics.watch_fleet(lambda: (len(store.devices(online=True)), len(store.devices())))
        self.fl = FlService(
            cfg.fl or FlServiceSettings(workdir=cfg.workdir / "fl"),
            store,
            self.registry,
            self.publisher,
            self.node,
            assigner=assigner,
            fleet=cfg.fleet,
        )
        self.identity = self._provisioner(cfg, store)
        services = CloudServices(
            store,
            self.registry,
            assigner,
            self.metrics,
            cfg.fleet,
            fl=self.fl,
            identity=self.identity,
            auth=auth,
            allowed_hosts=(*LOOPBACK_HOSTS, *cfg.allowed_hosts),
            max_upload_bytes=cfg.max_upload_bytes,
        )
        app = create_app(services)
        # Grafana reads these from /metrics; they must not depend on the web dashboard.
        register_device_metrics(self.metrics, store, fleet=cfg.fleet, limits=cfg.series_limits)
        if cfg.dashboard is not None:
            self.dashboard = mount_dashboard(
                app, services, settings=cfg.dashboard, rounds=StoreRounds(store, self.fl.models)
            )
        if cfg.homeassistant is not None:
            # Held before start() so that stop() closes its store connection if start fails.
            self.homeassistant = HomeAssistantPublisher(
                self.broker_url,
                open_store(self.db_url),
                cfg.homeassistant,
                client_id=f"{cfg.node_id}-homeassistant",
                version=version,
                owns_store=True,
            )
            self.homeassistant.start(timeout)
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                host=cfg.http_host,
                port=self.http_port,
                log_level="warning",
                lifespan="off",
                ws="none",
                # Open dashboard streams must not hold a shutdown for long.
                timeout_graceful_shutdown=2,
            )
        )
        self._server = server
        self._spawn(server.run, "http")
        self._spawn(self._retention_loop, "retention")
        deadline = time.monotonic() + timeout
        while not server.started:
            if time.monotonic() > deadline or not self._threads[0].is_alive():
                raise CloudError(f"the HTTP API did not start on {self.http_url}")
            time.sleep(0.02)

    def _command_key(self, cfg: CloudConfig) -> Path:
        """The command-signing key: the configured one, or the workdir's (made if missing)."""
        if cfg.command_key is not None:
            # Provisioning hands devices <workdir>/keys/command.pub: it must match this key.
            write_public_key(cfg.command_key, key_paths(cfg.workdir)[1])
            return cfg.command_key
        priv, pub, created = ensure_command_key(cfg.workdir)
        log.warning(
            "commands are signed with %s (%s); agents need its public key %s in "
            "[trust] command_keys",
            priv,
            "created now" if created else "existing",
            pub,
        )
        if cfg.record_macs == "when-registered":
            log.warning(
                "devices without a registered record key are accepted unauthenticated "
                "(record_macs = when-registered, the laptop default); production: required"
            )
        return priv

    def _provisioner(self, cfg: CloudConfig, store: TelemetryStore) -> Provisioner:
        settings = cfg.identity or IdentitySettings(directory=cfg.workdir / "identity")
        if not settings.trusted_keys:
            settings = replace(settings, trusted_keys=cfg.trusted_keys)
        if not settings.command_keys:
            # The command key's public half (created by the command signer at first start).
            settings = replace(settings, command_keys=(cfg.workdir / "keys" / "command.pub",))
        tokens = AuthTokens(self.tokens) if self.tokens is not None else None
        provisioner = Provisioner(
            settings, store, lambda: self.broker_url, tokens=tokens, record_keys=RecordKeys(store)
        )
        if cfg.broker_dir is not None:
            from edgefleet.cloud.broker.production import ProductionConfig

            broker = ProductionConfig.load(absolute(cfg.broker_dir))
            provisioner.broker = broker.authority(crl=provisioner.current_crl)
        log.info(
            "device provisioning: POST /v1/provision with a claim token "
            "(`edgefleet device claim-token`); project CA %s",
            provisioner.ca.cert_path,
        )
        return provisioner

    def _authenticator(self, cfg: CloudConfig, store: TelemetryStore) -> Authenticator:
        self.tokens = tokens = TokenStore(cfg.workdir / "auth.db")
        if tokens.count() == 0:
            # First start: one admin token, shown once (`cloud run` prints it) and kept 0600.
            secret, _ = tokens.create("bootstrap-admin", Role.admin)
            path = cfg.workdir / "admin.token"
            path.touch(0o600)
            path.chmod(0o600)
            path.write_text(secret + "\n")
            self.admin_token = secret
            log.warning("first start: admin API token written to %s", path)
        elif (cfg.workdir / "admin.token").is_file():
            self.admin_token = (cfg.workdir / "admin.token").read_text().strip() or None

        def assigned(device_id: str, sha256: str) -> bool:
            return any(
                a.sha256 == sha256 and any(t.device_id == device_id for t in a.targets)
                for a in store.assignments(limit=1000)
            )

        grants = DownloadGrants.load_or_create(cfg.workdir / "keys" / "grant.key")
        return Authenticator(tokens, grants=grants, assigned=assigned)

    def _spawn(self, target: object, name: str) -> None:
        t = threading.Thread(target=target, name=f"cloud-{name}", daemon=True)  # type: ignore[arg-type]
        t.start()
        self._threads.append(t)

    def _retention_loop(self) -> None:
        every = self.config.retention.every_s
        if every <= 0:  # periodic pruning off: only explicit Cloud.prune() calls
            return
        while not self._stop.wait(every):
            try:
                self.prune()
            except CloudError as exc:  # a store down now may be back at the next round
                log.error("retention: pruning failed: %s", exc)

    def prune(self) -> dict[str, int]:
        """Apply the retention settings now."""
        r, store, now = self.config.retention, self.store, time.time()
        out: dict[str, int] = {}
        if store is None:
            return out
        if r.raw_days is not None:
            out.update(store.prune(now - r.raw_days * 86400))
        if r.quarantine_days is not None:
            out.update(store.prune(now - r.quarantine_days * 86400, ("quarantine",)))
        return out

    def stop(self) -> None:
        """Stop the API, flush and stop the workers, then the broker (if we started it)."""
        self._stop.set()
        if self.dashboard is not None:
            self.dashboard.close()  # ends the live streams so the server can stop at once
            self.dashboard = None
        if self.homeassistant is not None:
            self.homeassistant.stop()
            self.homeassistant = None
        if self._server is not None:
            self._server.should_exit = True
        for t in self._threads:
            t.join(10)
        self._threads.clear()
        if self.fl is not None:
            self.fl.close()
            self.fl = None
        for w in self.workers:
            w.stop()
            w.store.close()
        self.workers.clear()
        if self.publisher is not None:
            self.publisher.stop()
            self.publisher = None
        self.identity = None
        if self.tokens is not None:
            self.tokens.close()
            self.tokens = None
        if self.store is not None:
            self.store.close()
            self.store = None
        if self.broker is not None:
            self.broker.stop()
            self.broker = None
            self._broker_url = self.config.broker_url

    def wait(self) -> None:
        """Block until :meth:`stop` is called (from a signal handler, say)."""
        self._stop.wait()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
