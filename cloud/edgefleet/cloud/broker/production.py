"""Mosquitto for production: a TLS listener where a device's certificate is its identity.

The cloud writes the whole broker configuration (docs/broker.md, "Production"):

- a TLS listener with ``require_certificate true`` and ``use_identity_as_username true``, so the
  username every ACL check sees is the certificate's CN, which the project CA sets to the
  device id; a client cannot choose it;
- a loopback-only listener where the cloud's own identities log in with passwords (and, only if
  asked, anonymous clients: the laptop way of working);
- ACLs from the device registry: a device may publish only its own status, telemetry, events and
  command acks and read only its own commands and its fleet's broadcasts.

Two backends keep the ACLs current. :class:`DynsecAuthority` drives Mosquitto's dynamic
security plugin over ``$CONTROL/dynamic-security/v1``: enrolling and revoking take effect at
once and revoking kicks the device. :class:`FileAuthority` rewrites an ACL file and a CRL and
sends SIGHUP, for a Mosquitto without the plugin.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.cloud.broker.base import BrokerProcess
from edgefleet.cloud.broker.mosquitto import _find, shipped_config
from edgefleet.protocol import topics
from edgefleet.protocol.errors import ConfigError, EdgefleetError

Backend = Literal["dynsec", "files"]

# The cloud's own broker identities. A leading '_' can never be a device id
# (topics.validate_id), so no device certificate can carry one of these names.
INGEST = "_ingest"
COMMANDS = "_commands"
CLOUD = "_cloud"  # both of the above, for a cloud that uses one broker URL (today's Cloud)
ADMIN = "_admin"  # dynamic-security administration only
CLOUD_IDENTITIES = (INGEST, COMMANDS, CLOUD, ADMIN)

DYNSEC_TOPIC = "$CONTROL/dynamic-security/v1"
_DYNSEC_LIBS = (
    "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
    "/usr/local/lib/mosquitto_dynamic_security.so",
)
# PBKDF2-SHA512 as Mosquitto 2.x checks it; far more rounds than mosquitto_ctrl's 101, since
# only the cloud's few identities log in with a password (devices use certificates).
_PW_ITERATIONS = 20_000


class BrokerAuthorityError(EdgefleetError):
    """The broker refused or did not answer a change to its identities or ACLs."""

    reason = "broker-authority"


class BrokerAuthority(Protocol):
    """Who may connect to the broker and what each device may touch."""

    def enrol(self, device_id: str, fleet: str) -> None:
        """Let ``device_id`` (its certificate's CN) use its own subtree of ``fleet``."""
        ...

    def revoke(self, device_id: str) -> None:
        """Disconnect ``device_id`` and keep it out: no reconnect, no topic."""
        ...


# --- the rules, once, for both backends -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rule:
    """One ACL entry: ``write`` = publish, ``read`` = subscribe and receive."""

    access: Literal["read", "write"]
    topic: str


def device_rules(fleet: str, device: str) -> list[Rule]:
    """What one device may do (the same lines as :func:`topics.device_acl`)."""
    lines = topics.device_acl(fleet, device)[1:]
    return [Rule("write" if ln.split()[1] == "write" else "read", ln.split()[2]) for ln in lines]


_P = topics.PREFIX
INGEST_RULES = (
    *(Rule("read", f) for f in topics.uplink_filters()),
    Rule("write", f"{_P}/+/+/cmd/commit"),  # commit-acks come from the ingest
)
COMMAND_RULES = (
    Rule("write", f"{_P}/+/+/cmd/+"),  # `+` as device level includes the `_all` broadcast
    Rule("read", f"{_P}/+/+/cmd/+/ack"),
    Rule("read", f"{_P}/+/+/status"),
)
ANONYMOUS_RULES = (Rule("read", f"{_P}/#"), Rule("write", f"{_P}/#"))
IDENTITY_RULES: dict[str, tuple[Rule, ...]] = {
    INGEST: INGEST_RULES,
    COMMANDS: COMMAND_RULES,
    CLOUD: (*INGEST_RULES, *COMMAND_RULES),
}


# --- configuration ----------------------------------------------------------------------------


def dynsec_plugin() -> Path | None:
    """The dynamic-security plugin of the installed Mosquitto, if there is one."""
    for candidate in _DYNSEC_LIBS:
        if Path(candidate).is_file():
            return Path(candidate)
    return None


@dataclass(frozen=True)
class ProductionConfig:
    """The files :func:`write_production_config` wrote, and how to reach the broker."""

    directory: Path
    backend: Backend
    tls_host: str
    tls_port: int
    local_port: int
    anonymous_loopback: bool
    passwords: dict[str, str] = field(repr=False)

    @property
    def config_path(self) -> Path:
        """``mosquitto.conf``: start the broker with ``mosquitto -c`` on it."""
        return self.directory / "mosquitto.conf"

    @property
    def crl_path(self) -> Path:
        """The certificate revocation list the TLS listener checks (PEM)."""
        return self.directory / "crl.pem"

    @property
    def acl_path(self) -> Path:
        """The ACL file (files backend)."""
        return self.directory / "acl"

    @property
    def state_path(self) -> Path:
        """Enrolled devices, device id → fleet (files backend)."""
        return self.directory / "devices.json"

    def local_url(self, identity: str = CLOUD) -> str:
        """``mqtt://user:password@127.0.0.1:port`` of one cloud identity, for ``--broker``."""
        return f"mqtt://{identity}:{self.passwords[identity]}@127.0.0.1:{self.local_port}"

    @classmethod
    def load(cls, directory: Path) -> ProductionConfig:
        """Read back a configuration written earlier into ``directory``."""
        meta = json.loads((directory / "edgefleet-broker.json").read_text())
        creds = json.loads((directory / "credentials.json").read_text())
        return cls(directory=directory, passwords=creds, **meta)

    def authority(
        self,
        *,
        crl: Callable[[], bytes] | None = None,
        reload: Callable[[], None] | None = None,
    ) -> DynsecAuthority | FileAuthority:
        """The :class:`BrokerAuthority` for this configuration's backend.

        ``crl`` returns the current CRL (PEM) of the project CA; revoking writes it and has the
        broker reload it so the device's certificate stops working. ``reload`` asks the broker to
        re-read its files (default: SIGHUP to the pid in ``mosquitto.pid``).
        """
        reload = reload or self._sighup
        if self.backend == "dynsec":
            return DynsecAuthority(self, crl=crl, reload=reload)
        return FileAuthority(self, crl=crl, reload=reload)

    def _sighup(self) -> None:
        pid_file = self.directory / "mosquitto.pid"
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError) as exc:
            raise BrokerAuthorityError(
                f"cannot tell Mosquitto to reload: {pid_file} is missing or unreadable ({exc}); "
                "start it with `mosquitto -d -c mosquitto.conf` or pass reload= to authority()"
            ) from exc
        os.kill(pid, signal.SIGHUP)


def _hash_password(password: str, salt: bytes, iterations: int = _PW_ITERATIONS) -> bytes:
    return hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, 64)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _operational_settings(datadir: Path) -> str:
    """The shipped template's persistence and queue settings, without its anonymous listener."""
    text = shipped_config().replace("$datadir", str(datadir))
    skip = ("listener ", "allow_anonymous", "per_listener_settings")
    return "\n".join(ln for ln in text.splitlines() if not ln.startswith(skip))


def write_production_config(
    out: Path,
    *,
    ca: Path,
    cert: Path,
    key: Path,
    crl: bytes | None = None,
    tls_host: str = "0.0.0.0",  # noqa: S104 - devices dial in from the network, over TLS only
    tls_port: int = 8883,
    local_port: int = 1884,
    anonymous_loopback: bool = False,
    backend: Backend | Literal["auto"] = "auto",
    devices: Iterable[tuple[str, str]] = (),
    user: str | None = None,
) -> ProductionConfig:
    """Write Mosquitto's production configuration into ``out`` and return what it holds.

    ``devices`` are (device id, fleet) pairs already in the registry; more are enrolled later
    through :meth:`ProductionConfig.authority`. ``crl`` is the CA's current CRL (PEM); without
    one an empty list is not possible to sign here, so pass the CA's (``ProjectCA.crl_pem``).
    """
    for what, path in (("--ca", ca), ("--cert", cert), ("--key", key)):
        if not Path(path).is_file():
            raise ConfigError(f"{what} {path}: no such file")
    if crl is None:
        raise ConfigError(
            "a CRL is needed so that revoked device certificates are refused: pass the project "
            "CA's (ProjectCA.crl_pem([]) gives an empty one)"
        )
    plugin = dynsec_plugin()
    if backend == "auto":
        backend = "dynsec" if plugin is not None else "files"
    if backend == "dynsec" and plugin is None:
        raise ConfigError(
            "the dynamic security plugin (mosquitto_dynamic_security.so) is not installed: "
            "install Mosquitto 2.x from Debian/Ubuntu or use --backend files"
        )
    out = Path(out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.chmod(out, 0o700)
    passwords = {name: secrets.token_urlsafe(24) for name in CLOUD_IDENTITIES}
    _write_private(out / "credentials.json", json.dumps(passwords, indent=2) + "\n")
    for name, src in (("ca.pem", ca), ("server.pem", cert), ("server.key", key)):
        shutil.copyfile(src, out / name)
    os.chmod(out / "server.key", 0o600)
    cfg = ProductionConfig(
        directory=out,
        backend=backend,
        tls_host=tls_host,
        tls_port=tls_port,
        local_port=local_port,
        anonymous_loopback=anonymous_loopback,
        passwords=passwords,
    )
    cfg.crl_path.write_bytes(crl)
    meta = {
        "backend": backend,
        "tls_host": tls_host,
        "tls_port": tls_port,
        "local_port": local_port,
        "anonymous_loopback": anonymous_loopback,
    }
    (out / "edgefleet-broker.json").write_text(json.dumps(meta, indent=2) + "\n")
    enrolled = dict((d, f) for d, f in ((topics.validate_id(d), f) for d, f in devices))

    lines = [
        "# Written by `edgefleet cloud broker-config` (docs/broker.md, Production). Regenerate,",
        "# do not edit: enrolment and revocation go through the cloud.",
        # One set of authentication and ACL rules for every listener: a client's rights
        # depend on who it is, never on the port it came in by.
        "per_listener_settings false",
        f"allow_anonymous {'true' if anonymous_loopback else 'false'}",
        f"pid_file {out / 'mosquitto.pid'}",
        "",
        "# Devices: TLS, a certificate from the project CA is required; its CN is the username.",
        f"listener {tls_port} {tls_host}",
        f"cafile {out / 'ca.pem'}",
        f"certfile {out / 'server.pem'}",
        f"keyfile {out / 'server.key'}",
        f"crlfile {cfg.crl_path}",
        "require_certificate true",
        "use_identity_as_username true",
        "",
        "# The cloud's own identities, with passwords, on loopback only"
        + (" (anonymous clients too: --anonymous-loopback)." if anonymous_loopback else "."),
        f"listener {local_port} 127.0.0.1",
        "",
    ]
    if backend == "dynsec":
        _write_private(out / "dynamic-security.json", _dynsec_document(passwords, enrolled, cfg))
        lines += [f"plugin {plugin}", f"plugin_opt_config_file {out / 'dynamic-security.json'}"]
    else:
        pw_lines = []
        for name in (INGEST, COMMANDS, CLOUD):
            salt = secrets.token_bytes(12)
            digest = _hash_password(passwords[name], salt)
            pw_lines.append(f"{name}:$7${_PW_ITERATIONS}${_b64(salt)}${_b64(digest)}")
        _write_private(out / "passwd", "\n".join(pw_lines) + "\n")
        cfg.state_path.write_text(json.dumps(enrolled, indent=2) + "\n")
        cfg.acl_path.write_text(_acl_file(enrolled, anonymous_loopback))
        lines += [f"password_file {out / 'passwd'}", f"acl_file {cfg.acl_path}"]
    if user is not None:
        lines.append(f"user {user}")
    text = "\n".join(lines) + "\n\n" + _operational_settings(out / "data")
    (out / "data").mkdir(exist_ok=True)
    cfg.config_path.write_text(text + "\n")
    return cfg


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


def _acl_lines(rules: Iterable[Rule]) -> list[str]:
    return [f"topic {r.access} {r.topic}" for r in rules]


def _acl_file(enrolled: dict[str, str], anonymous_loopback: bool) -> str:
    # Lines before the first `user` apply to anonymous clients (mosquitto.conf(5), acl_file);
    # only the loopback listener can have any.
    out = ["# Written by edgefleet; FileAuthority rewrites it on enrol and revoke."]
    if anonymous_loopback:
        out += _acl_lines(ANONYMOUS_RULES)
    for name, rules in IDENTITY_RULES.items():
        out += ["", f"user {name}", *_acl_lines(rules)]
    for device, fleet in sorted(enrolled.items()):
        out += ["", *topics.device_acl(fleet, device)]
    return "\n".join(out) + "\n"


def _dynsec_acls(rules: Iterable[Rule]) -> list[dict[str, Any]]:
    acls: list[dict[str, Any]] = []
    for r in rules:
        if r.access == "write":
            acls.append({"acltype": "publishClientSend", "topic": r.topic, "allow": True})
        else:
            for kind in ("subscribePattern", "publishClientReceive"):
                acls.append({"acltype": kind, "topic": r.topic, "allow": True})
            # Shared subscriptions (the ingest's workers) are checked with their prefix.
            shared = f"$share/+/{r.topic}"
            acls.append({"acltype": "subscribePattern", "topic": shared, "allow": True})
    return acls


def _device_role(device: str) -> str:
    return f"device:{device}"


def _dynsec_document(
    passwords: dict[str, str], enrolled: dict[str, str], cfg: ProductionConfig
) -> str:
    def client(name: str, roles: Sequence[str]) -> dict[str, Any]:
        salt = secrets.token_bytes(12)
        return {
            "username": name,
            "password": _b64(_hash_password(passwords[name], salt)),
            "salt": _b64(salt),
            "iterations": _PW_ITERATIONS,
            "roles": [{"rolename": r} for r in roles],
        }

    control = "$CONTROL/dynamic-security/#"
    roles: list[dict[str, Any]] = [
        {
            "rolename": "admin",
            "acls": [
                {"acltype": "publishClientSend", "topic": control, "allow": True},
                {"acltype": "publishClientReceive", "topic": control, "allow": True},
                {"acltype": "subscribePattern", "topic": control, "allow": True},
            ],
        },
        {"rolename": "ingest", "acls": _dynsec_acls(INGEST_RULES)},
        {"rolename": "commands", "acls": _dynsec_acls(COMMAND_RULES)},
    ]
    clients = [
        client(ADMIN, ["admin"]),
        client(INGEST, ["ingest"]),
        client(COMMANDS, ["commands"]),
        client(CLOUD, ["ingest", "commands"]),
    ]
    for device, fleet in sorted(enrolled.items()):
        roles.append(
            {"rolename": _device_role(device), "acls": _dynsec_acls(device_rules(fleet, device))}
        )
        clients.append({"username": device, "roles": [{"rolename": _device_role(device)}]})
    groups: list[dict[str, Any]] = []
    doc: dict[str, Any] = {
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": False,
            "subscribe": False,
            "unsubscribe": True,
        },
        "clients": clients,
        "groups": groups,
        "roles": roles,
    }
    if cfg.anonymous_loopback:
        roles.append({"rolename": "anonymous", "acls": _dynsec_acls(ANONYMOUS_RULES)})
        groups.append({"groupname": "anonymous", "roles": [{"rolename": "anonymous"}]})
        doc["anonymousGroup"] = "anonymous"
    return json.dumps(doc, indent=2) + "\n"


# --- backends ---------------------------------------------------------------------------------


class _RevocationList:
    """Writes the CA's current CRL and has the broker reload it (shared by both backends)."""

    def __init__(
        self, cfg: ProductionConfig, crl: Callable[[], bytes] | None, reload: Callable[[], None]
    ) -> None:
        self.cfg = cfg
        self._crl = crl
        self._reload = reload

    def refresh(self) -> bool:
        """Write a fresh CRL; True if there was one to write (then the broker must reload)."""
        if self._crl is None:
            return False
        tmp = self.cfg.crl_path.with_suffix(".tmp")
        tmp.write_bytes(self._crl())
        tmp.replace(self.cfg.crl_path)
        return True


class FileAuthority(_RevocationList):
    """ACL file + CRL + SIGHUP: for a Mosquitto without the dynamic security plugin.

    Mosquitto re-reads the ACL file and the CRL on SIGHUP, but keeps the TLS sessions it has:
    a revoked device stays connected, refused every publish and every message, until it
    reconnects, which the CRL then refuses (docs/broker.md has the measurements).
    """

    def __init__(
        self,
        cfg: ProductionConfig,
        *,
        crl: Callable[[], bytes] | None = None,
        reload: Callable[[], None],
    ) -> None:
        super().__init__(cfg, crl, reload)
        self._lock = threading.Lock()

    def _devices(self) -> dict[str, str]:
        data: dict[str, str] = json.loads(self.cfg.state_path.read_text())
        return data

    def _save(self, devices: dict[str, str]) -> None:
        tmp = self.cfg.acl_path.with_suffix(".tmp")
        tmp.write_text(_acl_file(devices, self.cfg.anonymous_loopback))
        tmp.replace(self.cfg.acl_path)
        self.cfg.state_path.write_text(json.dumps(devices, indent=2) + "\n")

    def enrol(self, device_id: str, fleet: str) -> None:
        """Add the device's ACL block and reload."""
        topics.validate_id(device_id, "device id")
        topics.validate_id(fleet, "fleet id")
        with self._lock:
            devices = self._devices()
            devices[device_id] = fleet
            self._save(devices)
            self._reload()

    def revoke(self, device_id: str) -> None:
        """Drop the device's ACL block, write the CRL and reload."""
        with self._lock:
            devices = self._devices()
            devices.pop(device_id, None)
            self._save(devices)
            self.refresh()
            self._reload()

    def enrolled(self) -> dict[str, str]:
        """Device id → fleet of every enrolled device."""
        return self._devices()


class DynsecAuthority(_RevocationList):
    """Mosquitto's dynamic security plugin, driven over MQTT as the ``_admin`` identity.

    Enrolling creates a role with the device's ACLs and a client named after the device id;
    revoking deletes both, which makes the plugin kick the device at once. A certificate's
    holder skips password checks (``use_identity_as_username``), so a deleted client could
    still open a session, with no rights at all; the CRL (when given) refuses it at the TLS
    handshake.
    """

    def __init__(
        self,
        cfg: ProductionConfig,
        *,
        crl: Callable[[], bytes] | None = None,
        reload: Callable[[], None],
        timeout: float = 10.0,
    ) -> None:
        super().__init__(cfg, crl, reload)
        self.timeout = timeout
        self._lock = threading.Lock()

    def enrol(self, device_id: str, fleet: str) -> None:
        """Create (or replace) the device's role and client."""
        topics.validate_id(device_id, "device id")
        topics.validate_id(fleet, "fleet id")
        role = _device_role(device_id)
        acls = _dynsec_acls(device_rules(fleet, device_id))
        self._run(
            [
                {"command": "deleteClient", "username": device_id},
                {"command": "deleteRole", "rolename": role},
                {"command": "createRole", "rolename": role, "acls": acls},
                {"command": "createClient", "username": device_id, "roles": [{"rolename": role}]},
            ],
            tolerate={"deleteClient", "deleteRole"},
        )

    def revoke(self, device_id: str) -> None:
        """Delete the device's client (the plugin disconnects it) and role; reload the CRL."""
        self._run(
            [
                {"command": "deleteClient", "username": device_id},
                {"command": "deleteRole", "rolename": _device_role(device_id)},
            ],
            tolerate={"deleteClient", "deleteRole"},
        )
        if self.refresh():
            self._reload()

    def enrolled(self) -> list[str]:
        """Usernames of the enrolled devices."""
        resp = self._run([{"command": "listClients", "verbose": False}])[0]
        names: list[str] = resp.get("data", {}).get("clients", [])
        return [n for n in names if n not in CLOUD_IDENTITIES]

    def _run(
        self, commands: list[dict[str, Any]], tolerate: set[str] | None = None
    ) -> list[dict[str, Any]]:
        with self._lock, _control_client(self.cfg, self.timeout) as send:
            responses = send(commands)
        for cmd, resp in zip(commands, responses, strict=True):
            err = resp.get("error")
            if err and cmd["command"] not in (tolerate or set()):
                raise BrokerAuthorityError(
                    f"the broker refused {cmd['command']} ({err}); check its log and "
                    f"{self.cfg.directory / 'dynamic-security.json'}"
                )
        return responses


@contextlib.contextmanager
def _control_client(
    cfg: ProductionConfig, timeout: float
) -> Iterator[Callable[[list[dict[str, Any]]], list[dict[str, Any]]]]:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"_admin-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv5,
    )
    client.username_pw_set(ADMIN, cfg.passwords[ADMIN])
    cond = threading.Condition()
    state: dict[str, Any] = {"connected": None, "subscribed": False, "replies": {}}

    def on_connect(_c: object, _u: object, _f: object, rc: Any, _p: object) -> None:
        with cond:
            state["connected"] = rc
            cond.notify_all()

    def on_subscribe(*_a: object) -> None:
        with cond:
            state["subscribed"] = True
            cond.notify_all()

    def on_message(_c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with contextlib.suppress(ValueError):
            for resp in json.loads(msg.payload).get("responses", []):
                with cond:
                    state["replies"][resp.get("correlationData")] = resp
                    cond.notify_all()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message

    def wait(pred: Callable[[], bool], what: str) -> None:
        with cond:
            if not cond.wait_for(pred, timeout):
                raise BrokerAuthorityError(
                    f"no answer from the broker's dynamic security plugin ({what}) within "
                    f"{timeout}s at 127.0.0.1:{cfg.local_port}; is Mosquitto running with "
                    f"{cfg.config_path}?"
                )

    try:
        client.connect("127.0.0.1", cfg.local_port)
    except OSError as exc:
        raise BrokerAuthorityError(
            f"cannot reach the broker at 127.0.0.1:{cfg.local_port} ({exc}); is it running?"
        ) from exc
    client.loop_start()
    try:
        wait(lambda: state["connected"] is not None, "connect")
        if state["connected"].is_failure:
            raise BrokerAuthorityError(
                f"the broker refused the {ADMIN} identity ({state['connected']}): "
                f"{cfg.directory / 'credentials.json'} does not match its configuration"
            )
        client.subscribe(f"{DYNSEC_TOPIC}/response", qos=1)
        wait(lambda: bool(state["subscribed"]), "subscribe")

        def send(commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
            ids = [uuid.uuid4().hex for _ in commands]
            body = [dict(c, correlationData=i) for c, i in zip(commands, ids, strict=True)]
            client.publish(DYNSEC_TOPIC, json.dumps({"commands": body}), qos=1)
            wait(lambda: all(i in state["replies"] for i in ids), commands[0]["command"])
            return [state["replies"][i] for i in ids]

        yield send
    finally:
        client.disconnect()
        client.loop_stop()


# --- running it -------------------------------------------------------------------------------


class ProductionMosquitto(BrokerProcess):
    """Mosquitto started on a generated production configuration (tests, ``cloud run``)."""

    name = "mosquitto"

    def __init__(self, cfg: ProductionConfig) -> None:
        # The readiness check dials the loopback listener, which every configuration has.
        super().__init__(cfg.directory / "run", port=cfg.local_port, host="127.0.0.1")
        exe = _find()
        if exe is None:
            raise ConfigError("mosquitto is not installed: apt-get install -y mosquitto")
        self.executable = exe
        self.cfg = cfg
        self.allows_anonymous = cfg.anonymous_loopback

    def command(self) -> list[str]:
        """``mosquitto -c <generated config>``."""
        return [self.executable, "-c", str(self.cfg.config_path)]

    def reload(self) -> None:
        """SIGHUP: re-read the ACL file, password file and CRL."""
        pid = self.pid
        if pid is None:
            raise BrokerAuthorityError("the broker is not running; nothing to reload")
        os.kill(pid, signal.SIGHUP)
