"""The agent's TOML configuration: ``${ENV}`` substitution, validation, runtime-changeable keys."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from edgefleet.edge.fl.config import FlConfig
from edgefleet.edge.fl.errors import FlConfigError
from edgefleet.protocol.errors import ConfigError, TopicError
from edgefleet.protocol.messages import Scalar
from edgefleet.protocol.topics import validate_id

PositiveFloat = Annotated[float, Meta(gt=0)]
PositiveInt = Annotated[int, Meta(ge=1)]


class DeviceConfig(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Who this device is and where it keeps its state."""

    id: str
    fleet: str = "default"
    data_dir: str = "./edgefleet-data"


class MqttConfig(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How to reach the broker."""

    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=1, le=65535)] = 1883
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    keepalive_s: Annotated[int, Meta(ge=5, le=3600)] = 30
    codec: Literal["json", "msgpack"] = "json"
    clean_session: bool = False
    max_inflight: Annotated[int, Meta(ge=1, le=1000)] = 20
    reconnect_min_s: PositiveFloat = 0.2
    reconnect_max_s: PositiveFloat = 30.0
    connect_timeout_s: PositiveFloat = 5.0


class SourceConfig(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where samples come from: ``simulated``, ``serial`` or ``replay``."""

    kind: Literal["simulated", "serial", "replay"] = "simulated"
    # simulated
    signal: str = "vibration"
    seed: int = 0
    variation: float = 1.0
    # all
    rate_hz: PositiveFloat = 400.0
    chunk: Annotated[int, Meta(ge=1, le=100_000)] = 40
    realtime: bool = True
    channels: list[str] = []
    # serial (edgefleet.firmware_bridge.SerialLink)
    port: str = "/dev/ttyACM0"
    baud: PositiveInt = 115200
    mode: Literal["framed", "line"] = "framed"
    columns: list[str] = []
    time_key: str = ""
    time_scale: PositiveFloat = 1.0
    read_timeout_s: PositiveFloat = 5.0
    open_timeout_s: Annotated[float, Meta(ge=0)] = 0.0
    reconnect_min_s: PositiveFloat = 0.1
    reconnect_max_s: PositiveFloat = 2.0
    report_interval_s: PositiveFloat = 30.0
    # serial and replay
    format: Literal["csv", "json"] = "csv"
    # replay
    path: str = ""
    loop: bool = False
    limit_samples: Annotated[int, Meta(ge=0)] = 0


class ModelConfig(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The initial bundle, the keys bundles must be signed with, and the runtime override."""

    bundle: str | None = None
    trusted_keys: list[str] = []
    runtime: Literal["", "litert", "onnx"] = ""
    threads: Annotated[int, Meta(ge=1, le=64)] = 1
    # Where bundles are verified: "subprocess" keeps cryptography out of the agent's memory;
    # "auto" means subprocess under the device launchers, in-process for an embedded Agent.
    verify: Literal["auto", "process", "subprocess"] = "auto"


class UplinkConfig(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Batching and retry of outbox records."""

    batch_max: Annotated[int, Meta(ge=1, le=1000)] = 100
    flush_interval_s: PositiveFloat = 0.2
    resend_after_s: PositiveFloat = 30.0
    max_unacked: PositiveInt = 20_000
    max_pending_publishes: PositiveInt = 50
    publish_readings: bool = False


class OutboxConfig(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Size bounds of the SQLite outbox (drop oldest past them) and the training buffer."""

    path: str = ""
    max_records: PositiveInt = 200_000
    max_bytes: PositiveInt = 64 * 1024 * 1024
    training_samples_max: Annotated[int, Meta(ge=0)] = 1000
    # "full" fsyncs the WAL at every commit: a power cut keeps every committed row (a device).
    # "normal" survives a crash of the process but not of the machine: for simulated fleets,
    # where hundreds of outboxes share one disk and no power is ever cut.
    synchronous: Literal["full", "normal"] = "full"


class HealthConfig(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How often health samples are taken."""

    interval_s: PositiveFloat = 30.0


class DriftConfig(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How often drift sketches are sent and how fine their histograms are."""

    every_windows: Annotated[int, Meta(ge=0)] = 500
    bins: Annotated[int, Meta(ge=2, le=64)] = 10


class DeliveryConfig(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Limits of model downloads."""

    max_bundle_bytes: PositiveInt = 64 * 1024 * 1024
    timeout_s: PositiveFloat = 30.0
    retries: Annotated[int, Meta(ge=0, le=20)] = 3


class IdentityConfig(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[identity]``: the certificate ``agent provision`` got, and where it is renewed.

    Renewal rewrites ``cert_file`` and ``key_file`` (the same files ``[mqtt]`` names on a TLS
    broker) and the ``[fl]`` SuperNode key, the same key, when less than ``renew_below`` of
    the certificate's validity remains. Empty ``cloud``: not provisioned, nothing to renew.
    """

    cloud: str = ""
    cert_file: str | None = None
    key_file: str | None = None
    renew_below: Annotated[float, Meta(gt=0, lt=1)] = 0.3
    check_every_s: PositiveFloat = 3600.0


class TrustConfig(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[trust]``: who may command this agent, and the key that binds its records to it."""

    # Public keys (PEM, Ed25519) that may sign commands; none: every command is refused.
    command_keys: list[str] = []
    # 32 random bytes shared with the cloud (provisioning writes it, mode 0600): MACs every
    # record and status this device sends, and commit-acks the cloud sends back.
    record_key: str | None = None


class AgentConfig(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The whole agent configuration (docs/configuration.md lists every key)."""

    device: DeviceConfig
    mqtt: MqttConfig = MqttConfig()
    source: SourceConfig = SourceConfig()
    model: ModelConfig = ModelConfig()
    uplink: UplinkConfig = UplinkConfig()
    outbox: OutboxConfig = OutboxConfig()
    health: HealthConfig = HealthConfig()
    drift: DriftConfig = DriftConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    fl: FlConfig = FlConfig()
    trust: TrustConfig = TrustConfig()
    identity: IdentityConfig = IdentityConfig()

    @property
    def data_dir(self) -> Path:
        """The agent's state directory."""
        return Path(self.device.data_dir)

    @property
    def outbox_path(self) -> Path:
        """The outbox SQLite file."""
        return Path(self.outbox.path) if self.outbox.path else self.data_dir / "outbox.sqlite"


# Keys a `set-config` command may change while the agent runs, with their types. Everything
# else (identity, broker, source, keys) needs a restart, so the agent refuses it.
RUNTIME_KEYS: dict[str, type] = {
    "health.interval_s": float,
    "drift.every_windows": int,
    "uplink.batch_max": int,
    "uplink.flush_interval_s": float,
    "uplink.resend_after_s": float,
    "uplink.publish_readings": bool,
    "outbox.max_records": int,
}

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_FIX = {
    "device.id": "set [device] id = \"pi-0001\" (letters, digits, '.', '_', '-')",
    "mqtt.port": "use a TCP port between 1 and 65535 (1883 plain, 8883 TLS)",
    "source.kind": "choose simulated, serial or replay",
    "source.mode": 'choose "framed" (edgefleet frames with CRC) or "line" (CSV/JSON sketches)',
    "model.runtime": 'leave it empty to follow the bundle, or set "litert" or "onnx"',
}


def substitute_env(text: str, env: Mapping[str, str]) -> str:
    """Replace ``${NAME}`` and ``${NAME:-default}``; a missing variable without default fails."""

    def repl(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise ConfigError(
            f"environment variable ${{{name}}} is not set; "
            f"export {name}=... or write ${{{name}:-default}}"
        )

    # Commented-out lines may mention variables that are not set: leave them alone.
    return "".join(
        line if line.lstrip().startswith("#") else _ENV.sub(repl, line)
        for line in text.splitlines(keepends=True)
    )


def _key_of(msg: str) -> str:
    m = re.search(r"at `\$\.?([^`]*)`", msg)
    return m.group(1).replace("[", ".").replace("]", "") if m else ""


def parse_config(
    text: str,
    env: Mapping[str, str] | None = None,
    origin: str = "config",
    base: Path | None = None,
) -> AgentConfig:
    """Parse and validate TOML text into an :class:`AgentConfig`, raising ConfigError.

    Relative paths in it are made absolute against ``base`` (the current directory if None).
    """
    text = substitute_env(text, os.environ if env is None else env)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{origin} is not valid TOML: {exc}") from None
    try:
        cfg = msgspec.convert(raw, AgentConfig)
    except FlConfigError as exc:  # raised by FlConfig's own checks, not msgspec's
        raise FlConfigError(f"{origin}: {exc}") from None
    except msgspec.ValidationError as exc:
        msg = str(exc)
        key = _key_of(msg)
        problem = msg.split(" - at ", maxsplit=1)[0]
        if "Object contains unknown field" in msg:
            field = re.search(r"`([^`]*)`", msg)
            name = field.group(1) if field else "?"
            where = f"[{key}] " if key else ""
            raise ConfigError(
                f"{origin}: unknown key {where}{name}; remove it or check its spelling "
                "(`edgefleet agent config-sample` prints every key)"
            ) from None
        if "missing required field" in msg:
            field = re.search(r"`([^`]*)`", msg)
            name = field.group(1) if field else "?"
            full = f"{key}.{name}" if key else name
            hint = _FIX.get(
                full, f"add {name} = ... to the [{key}] table" if key else f"add a [{name}] table"
            )
            raise ConfigError(f"{origin}: {full} is required; {hint}") from None
        hint = _FIX.get(key, "see docs/configuration.md")
        raise ConfigError(f"{origin}: {key or 'config'}: {problem}; {hint}") from None
    cfg = resolve_paths(cfg, Path.cwd() if base is None else base)
    _check(cfg, origin)
    return cfg


def _under(base: Path, value: str) -> str:
    return str((base / Path(value).expanduser()).resolve())


def resolve_paths(cfg: AgentConfig, base: Path) -> AgentConfig:
    """``cfg`` with every relative file path made absolute against ``base``.

    The agent hands these to children that run elsewhere (the SuperNode runs in its state
    directory) and keeps them for the whole run, so they are fixed once, when the file is read.
    """
    base = base.expanduser().resolve()

    def opt(value: str | None) -> str | None:
        return _under(base, value) if value else value

    m, src, model, fl = cfg.mqtt, cfg.source, cfg.model, cfg.fl
    # A bare command name is looked up on PATH; only one with a slash is a path.
    supernode = _under(base, fl.supernode_bin) if "/" in fl.supernode_bin else fl.supernode_bin
    return msgspec.structs.replace(
        cfg,
        device=msgspec.structs.replace(cfg.device, data_dir=_under(base, cfg.device.data_dir)),
        mqtt=msgspec.structs.replace(
            m, ca_file=opt(m.ca_file), cert_file=opt(m.cert_file), key_file=opt(m.key_file)
        ),
        source=msgspec.structs.replace(src, path=opt(src.path) or ""),
        model=msgspec.structs.replace(
            model,
            bundle=opt(model.bundle),
            trusted_keys=[_under(base, k) for k in model.trusted_keys],
        ),
        outbox=msgspec.structs.replace(cfg.outbox, path=opt(cfg.outbox.path) or ""),
        trust=msgspec.structs.replace(
            cfg.trust,
            command_keys=[_under(base, k) for k in cfg.trust.command_keys],
            record_key=opt(cfg.trust.record_key),
        ),
        identity=msgspec.structs.replace(
            cfg.identity,
            cert_file=opt(cfg.identity.cert_file),
            key_file=opt(cfg.identity.key_file),
        ),
        fl=msgspec.structs.replace(
            fl,
            root_certificates=opt(fl.root_certificates),
            auth_private_key=opt(fl.auth_private_key),
            auth_public_key=opt(fl.auth_public_key),
            supernode_bin=supernode,
        ),
    )


def _check(cfg: AgentConfig, origin: str) -> None:
    for value, key in ((cfg.device.id, "device.id"), (cfg.device.fleet, "device.fleet")):
        try:
            validate_id(value, key)
        except TopicError as exc:
            raise ConfigError(f"{origin}: {key}: {exc}") from None
    m = cfg.mqtt
    if (m.cert_file is None) != (m.key_file is None):
        raise ConfigError(f"{origin}: mqtt.cert_file and mqtt.key_file go together; set both")
    if (m.ca_file or m.cert_file) and not m.tls:
        raise ConfigError(f"{origin}: mqtt.ca_file/cert_file need mqtt.tls = true")
    for key, path in (
        ("mqtt.ca_file", m.ca_file),
        ("mqtt.cert_file", m.cert_file),
        ("mqtt.key_file", m.key_file),
    ):
        if path and not Path(path).is_file():
            raise ConfigError(f"{origin}: {key}: {path} does not exist; give the PEM file's path")
    if m.reconnect_max_s < m.reconnect_min_s:
        raise ConfigError(f"{origin}: mqtt.reconnect_max_s must be >= mqtt.reconnect_min_s")
    _check_source(cfg.source, origin)
    for key in cfg.model.trusted_keys:
        if not Path(key).is_file():
            raise ConfigError(
                f"{origin}: model.trusted_keys: {key} does not exist; "
                "copy the fleet's public key there (`edgefleet keys generate` makes one)"
            )
    _check_trust(cfg.trust, origin)
    if cfg.model.bundle and not Path(cfg.model.bundle).exists():
        raise ConfigError(f"{origin}: model.bundle: {cfg.model.bundle} does not exist")
    if cfg.model.bundle and not cfg.model.trusted_keys:
        raise ConfigError(
            f"{origin}: model.bundle needs model.trusted_keys: bundles are verified before loading"
        )


def _check_trust(trust: TrustConfig, origin: str) -> None:
    for key in trust.command_keys:
        if not Path(key).is_file():
            raise ConfigError(
                f"{origin}: trust.command_keys: {key} does not exist; copy the cloud's "
                "<workdir>/keys/command.pub there (`edgefleet agent provision` does it)"
            )
    if trust.record_key and not Path(trust.record_key).is_file():
        raise ConfigError(
            f"{origin}: trust.record_key: {trust.record_key} does not exist; "
            "`edgefleet agent provision` writes it"
        )


def _check_source(src: SourceConfig, origin: str) -> None:
    if src.kind == "replay" and not src.path:
        raise ConfigError(f'{origin}: source.path is required when source.kind = "replay"')
    if src.kind == "serial":
        _check_serial(src, origin)


def _check_serial(src: SourceConfig, origin: str) -> None:
    if not src.channels:
        raise ConfigError(
            f'{origin}: source.channels is required for a serial source; e.g. ["ax", "ay", "az"] '
            "(one name per value the microcontroller sends, in order)"
        )
    if src.reconnect_max_s < src.reconnect_min_s:
        raise ConfigError(f"{origin}: source.reconnect_max_s must be >= source.reconnect_min_s")
    if src.mode == "line":
        # Imported here: only serial configs need the bridge (and pyserial) at load time. The
        # bridge itself, not the serial source: the sources import this module, not the reverse.
        from edgefleet.firmware_bridge import ChannelMap

        try:
            ChannelMap(
                channels=tuple(src.channels),
                format=src.format,
                columns=tuple(src.columns),
                time_key=src.time_key or None,
                time_scale=src.time_scale,
            )
        except ValueError as exc:
            raise ConfigError(
                f"{origin}: serial line mode: {exc} "
                "(check source.channels, source.columns, source.time_key)"
            ) from None
    elif src.columns or src.time_key:
        raise ConfigError(
            f'{origin}: source.columns and source.time_key apply to mode = "line" only; '
            'remove them or set source.mode = "line"'
        )


def load_config(path: Path, env: Mapping[str, str] | None = None) -> AgentConfig:
    """Read and validate a TOML config file; relative paths in it are from its directory."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    # Paths in a file are relative to the file, as for keys and certificates shipped beside it:
    # the agent then behaves the same whatever directory it is started from.
    return parse_config(text, env, origin=str(path), base=Path(path).absolute().parent)


def apply_runtime_change(cfg: AgentConfig, values: Mapping[str, Scalar]) -> AgentConfig:
    """A copy of ``cfg`` with whitelisted keys changed; ConfigError names any refused key."""
    unknown = sorted(k for k in values if k not in RUNTIME_KEYS)
    if unknown:
        raise ConfigError(
            f"not changeable at run time: {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(RUNTIME_KEYS))}",
            reason="unknown-key",
        )
    data: dict[str, Any] = msgspec.to_builtins(cfg)
    for key, raw in values.items():
        want = RUNTIME_KEYS[key]
        value = raw
        if want is float and isinstance(raw, int) and not isinstance(raw, bool):
            value = float(raw)
        if not isinstance(value, want) or (want is not bool and isinstance(value, bool)):
            raise ConfigError(f"{key} must be {want.__name__}, got {value!r}", reason="bad-value")
        table, name = key.split(".")
        data[table][name] = value
    try:
        return msgspec.convert(data, AgentConfig)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{exc}", reason="bad-value") from None


SAMPLE = """\
# edgefleet agent configuration (docs/configuration.md). Dollar-brace NAME and NAME:-default
# references read the environment, so secrets stay out of this file.

[device]
id = "${EDGEFLEET_DEVICE_ID:-pi-0001}"
fleet = "default"
data_dir = "/var/lib/edgefleet"

[mqtt]
host = "127.0.0.1"
port = 1883
# username = "${EDGEFLEET_MQTT_USER}"
# password = "${EDGEFLEET_MQTT_PASSWORD}"
tls = false
# ca_file = "/etc/edgefleet/ca.pem"
# cert_file = "/etc/edgefleet/device.pem"
# key_file = "/etc/edgefleet/device.key"
keepalive_s = 30
codec = "json"

[source]
kind = "simulated"        # simulated | serial | replay
signal = "vibration"
seed = 1
rate_hz = 400.0
chunk = 40
# channels = ["ax", "ay", "az"]   # serial (required); replay without a CSV header
# port = "/dev/serial/by-id/usb-Arduino_Nano-if00"   # serial: a stable by-id path survives replugs
# baud = 115200
# mode = "framed"         # serial: framed (edgefleet frames, CRC) | line (CSV/JSON sketches)
# format = "csv"          # csv | json (serial line mode, replay)
# columns = ["t_ms", "ax", "ay", "az"]   # serial line mode: CSV columns (default: channels)
# time_key = "t_ms"       # serial line mode: column/key with the MCU clock
# time_scale = 0.001      # its unit in seconds (millis())
# read_timeout_s = 5.0    # serial: silence before a short chunk is passed on
# path = "samples.csv"    # replay

[model]
# bundle = "/etc/edgefleet/bundles/vibration-1.0.0.tar.gz"
trusted_keys = []         # ["/etc/edgefleet/edgefleet-signing.pub"]
runtime = ""              # "" follows the bundle; "litert" or "onnx" overrides it
threads = 1
verify = "auto"           # auto | subprocess (keeps cryptography out of the agent) | process

[trust]
# Public keys that may sign commands (the cloud prints where its command.pub is). With none,
# the agent refuses every command (commit-acks too) and says so in its log and health.
command_keys = []         # ["/etc/edgefleet/command.pub"]
# record_key = "/etc/edgefleet/record.key"   # 32 random bytes, 0600: MACs what this device sends

[uplink]
batch_max = 100
flush_interval_s = 0.2
resend_after_s = 30.0
publish_readings = false

[outbox]
max_records = 200000
max_bytes = 67108864
training_samples_max = 1000

[health]
interval_s = 30.0

[drift]
every_windows = 500
bins = 10

[delivery]
max_bundle_bytes = 67108864
timeout_s = 30.0
retries = 3

[identity]
# Written by `edgefleet agent provision`: the cloud that renews this device's certificate
# ([mqtt] cert_file/key_file) once less than renew_below of its validity remains.
# cloud = "https://cloud.example.com"
renew_below = 0.3
check_every_s = 3600.0

[fl]
# Federated learning (docs/federated.md): needs edgefleet[fl] and ~200 MB while a SuperNode runs.
enabled = false
mode = "on-demand"        # on-demand: a SuperNode per start-training command | always
# superlink = "cloud.example.com:9092"   # always mode; on-demand takes it from the command
max_cpu_percent = 80.0    # refuse (and pause) training above this CPU load; 0: no limit
max_temperature_c = 75.0
window = ""               # "22:00-06:00": train only then (local time)
sample_every_windows = 0  # one model input into the buffer every N windows (0: per drift sketch)
min_samples = 1
deadline_s = 900.0        # longest on-demand session when the command names no deadline
"""
