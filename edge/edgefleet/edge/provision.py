"""``edgefleet agent provision`` and certificate renewal: a device's identity from a claim token.

The device makes its own EC P-256 key (it never leaves the device), sends a CSR with the
claim token to ``POST /v1/provision`` and writes what the cloud answers into a config
directory: ``agent.toml``, the certificate and key for MQTT over TLS, the same key in OpenSSH
format for Flower's SuperNode authentication, the cloud's command key, the bundle keys, the
record key and the device token (secrets 0600). Renewal makes a new key and proves the
request with the current one (``POST /v1/provision/renew``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import json
import logging
import os
import stat
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from edgefleet.edge.config import AgentConfig, load_config
from edgefleet.protocol.errors import ConfigError, EdgefleetError, TopicError
from edgefleet.protocol.topics import validate_id

log = logging.getLogger(__name__)

CONFIG_NAME = "agent.toml"
DEVICE_KEY = "device.key"
DEVICE_CERT = "device.crt"
CA_CERT = "ca.crt"
NODE_KEY = "node.key"
NODE_PUB = "node.pub"
RECORD_KEY = "record.key"
DEVICE_TOKEN = "device.token"  # noqa: S105 - a file name, not a secret
# Must match edgefleet.cloud.identity.service.RENEW_CONTEXT (the edge never imports the cloud).
RENEW_CONTEXT = b"edgefleet-renew/1\n"
_SCHEMES = {"mqtt": (1883, False), "tcp": (1883, False), "mqtts": (8883, True), "ssl": (8883, True)}


class ProvisionError(EdgefleetError):
    """Provisioning or renewal failed; the message says what to do."""

    reason = "provision"
    exit_code = 5


class ProvisionRefused(ProvisionError):
    """The cloud refused the claim token or the renewal (HTTP 4xx)."""

    reason = "provision-refused"


class CloudUnreachable(ProvisionError):
    """The cloud's API did not answer."""

    reason = "cloud-unreachable"
    exit_code = 7


@dataclass(frozen=True, slots=True)
class Provisioned:
    """What ``provision`` wrote: the config file and who the device now is."""

    config: Path
    device_id: str
    fleet: str
    serial: str
    not_after: float


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write atomically (temp file, fsync, rename) with ``mode`` from the first byte."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    os.fchmod(fd, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _new_key() -> tuple[Any, bytes, bytes, bytes]:
    """A new EC P-256 key: (key, PEM PKCS8, OpenSSH private, OpenSSH public)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    # P-256: TLS client certificates (OpenSSL, Mosquitto) and Flower's SuperNode
    # authentication (NIST curves only) both take it, so one key serves both.
    key = ec.generate_private_key(ec.SECP256R1())
    none = serialization.NoEncryption()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, none)
    ssh = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, none)
    pub = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return key, pem, ssh, pub


def _csr(key: Any, device_id: str | None) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id or "unprovisioned")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _post(url: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
    import urllib.error
    import urllib.request

    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise ConfigError(f"--cloud {url!r} must be an http:// or https:// URL")
    req = urllib.request.Request(  # noqa: S310 - http(s) only, checked above
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
            answer: dict[str, Any] = json.loads(resp.read())
            return answer
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read()).get("detail", exc.reason)
        except (ValueError, AttributeError):
            detail = exc.reason
        if 400 <= exc.code < 500:
            raise ProvisionRefused(f"the cloud refused ({exc.code}): {detail}") from None
        raise CloudUnreachable(f"the cloud answered {exc.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise CloudUnreachable(f"cannot reach the cloud at {url}: {exc}") from None


def _broker(url: str) -> tuple[str, int, bool]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in _SCHEMES or not parts.hostname:
        raise ProvisionError(f"the cloud named a broker URL this agent cannot use: {url!r}")
    default_port, tls = _SCHEMES[parts.scheme]
    return parts.hostname, parts.port or default_port, tls


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def default_data_dir(config_dir: Path) -> str:
    """Where the agent keeps its state: ``/var/lib/edgefleet`` beside ``/etc/edgefleet``.

    ``edgefleet agent install`` runs the service with ``ProtectSystem=strict``: it may write
    only its ``StateDirectory``, so a data directory under ``/etc/edgefleet`` would fail there.
    Any other config directory (a test, a laptop) keeps its data beside the config.
    """
    return "/var/lib/edgefleet" if Path(config_dir).parts[-2:] == ("etc", "edgefleet") else "data"


def target_root(config_dir: Path) -> Path:
    """The file system the service runs on: ``/``, or a staging root (``ROOT/etc/edgefleet``).

    Absolute paths in the config are the service's view; files are written under this root.
    """
    d = Path(config_dir)
    return d.parent.parent if d.parts[-2:] == ("etc", "edgefleet") else Path("/")


def _config_text(
    answer: dict[str, Any],
    files: dict[str, Any],
    cloud: str,
    bundle: Path | None,
    data_dir: str = "data",
) -> str:
    host, port, tls = _broker(answer["broker_url"])
    ident = files.get("identity", "")
    cert, key = json.dumps(ident + DEVICE_CERT), json.dumps(ident + DEVICE_KEY)
    mqtt = [f"host = {json.dumps(host)}", f"port = {port}", f"tls = {str(tls).lower()}"]
    if tls:
        mqtt += [
            f'ca_file = "{CA_CERT}"',
            f"cert_file = {cert}",
            f"key_file = {key}",
        ]
    if answer.get("mqtt_username"):
        mqtt += [
            f"username = {json.dumps(answer['mqtt_username'])}",
            f"password = {json.dumps(answer.get('mqtt_password') or '')}",
        ]
    trust = [f"command_keys = {_toml_list(files['command_keys'])}"]
    if files["record_key"]:
        trust.append(f'record_key = "{RECORD_KEY}"')
    return "\n".join(
        [
            "# Written by `edgefleet agent provision`; paths are relative to this file.",
            "[device]",
            f"id = {json.dumps(answer['device_id'])}",
            f"fleet = {json.dumps(answer['fleet'])}",
            f"data_dir = {json.dumps(data_dir)}",
            "",
            "[mqtt]",
            *mqtt,
            "",
            "[model]",
            *([f"bundle = {json.dumps(str(bundle))}"] if bundle is not None else []),
            f"trusted_keys = {_toml_list(files['trusted_keys'])}",
            "",
            "[trust]",
            *trust,
            "",
            "[identity]",
            f"cloud = {json.dumps(cloud)}",
            f"cert_file = {cert}",
            f"key_file = {key}",
            "",
            "[fl]",
            "# The SuperNode key is the device key (OpenSSH format); register node.pub",
            "# with the SuperLink (`edgefleet fl start --node-key`).",
            f"auth_private_key = {json.dumps(ident + NODE_KEY)}",
            f"auth_public_key = {json.dumps(ident + NODE_PUB)}",
            "",
        ]
    )


def provision(
    cloud: str,
    token: str,
    config_dir: Path,
    *,
    device_id: str | None = None,
    fleet: str | None = None,
    bundle: Path | None = None,
    data_dir: str | None = None,
    force: bool = False,
    timeout: float = 30.0,
) -> Provisioned:
    """Claim an identity from ``cloud`` with ``token`` and write the agent's config.

    ``bundle``: a signed bundle to serve from the first start (else the device waits for the
    cloud to assign one, and ``agent check`` says it has no model). ``data_dir``: the state
    directory written into the config (default :func:`default_data_dir`).
    """
    if device_id is not None:
        try:
            validate_id(device_id, "--device-id")
        except TopicError as exc:
            raise ConfigError(str(exc)) from None
    if bundle is not None:
        bundle = Path(bundle).expanduser().absolute()
        if not bundle.exists():
            raise ConfigError(f"--bundle {bundle} does not exist")
    d = Path(config_dir).expanduser().absolute()
    if (d / CONFIG_NAME).exists() and not force:
        raise ConfigError(
            f"{d / CONFIG_NAME} exists already; this device is provisioned (pass --force to "
            "replace its identity, or choose another --config-dir)"
        )
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, stat.S_IRWXU)
    key, pem, ssh, pub = _new_key()
    body = {"token": token, "csr": _csr(key, device_id), "device_id": device_id, "fleet": fleet}
    answer = _post(cloud.rstrip("/") + "/v1/provision", body, timeout)
    dev = str(answer["device_id"])
    # Nothing is written before the cloud said yes: a refused claim leaves the directory as
    # it was.
    state = data_dir or default_data_dir(d)
    # The files renewal rewrites (certificate, key, SuperNode key) live in the state directory
    # when it is the service's (/var/lib/edgefleet): under ProtectSystem=strict the agent may
    # write nothing else, and /etc/edgefleet (the config, the trusted keys) stays read-only.
    seen = PurePosixPath(state) / "identity"  # as the service sees it
    renewable = target_root(d) / seen.relative_to("/") if seen.is_absolute() else d
    renewable.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write(renewable / DEVICE_KEY, pem, 0o600)
    _write(renewable / NODE_KEY, ssh, 0o600)
    _write(renewable / NODE_PUB, pub + f" {dev}\n".encode(), 0o644)
    _write(renewable / DEVICE_CERT, answer["certificate"].encode(), 0o644)
    _write(d / CA_CERT, answer["ca"].encode(), 0o644)
    files: dict[str, Any] = {
        "command_keys": [],
        "trusted_keys": [],
        "record_key": False,
        "identity": "" if renewable == d else f"{seen}/",
    }
    for i, text in enumerate(answer.get("command_keys") or []):
        _write(d / f"command-{i}.pub", text.encode(), 0o644)
        files["command_keys"].append(f"command-{i}.pub")
    for i, text in enumerate(answer.get("trusted_keys") or []):
        _write(d / f"bundle-{i}.pub", text.encode(), 0o644)
        files["trusted_keys"].append(f"bundle-{i}.pub")
    if answer.get("record_key"):
        _write(d / RECORD_KEY, base64.b64decode(answer["record_key"]), 0o600)
        files["record_key"] = True
    if answer.get("device_token"):
        _write(d / DEVICE_TOKEN, answer["device_token"].encode() + b"\n", 0o600)
    # A relative state directory lives beside the config; /var/lib/edgefleet is the service's
    # StateDirectory, which systemd creates with the service user as owner.
    if not Path(state).is_absolute():
        (d / state).mkdir(mode=0o700, parents=True, exist_ok=True)
    _write(d / CONFIG_NAME, _config_text(answer, files, cloud, bundle, state).encode(), 0o600)
    load_config(d / CONFIG_NAME)  # what agent check will read must be valid now
    return Provisioned(
        d / CONFIG_NAME, dev, str(answer["fleet"]), str(answer["serial"]), answer["not_after"]
    )


# -- renewal ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Validity:
    """The current certificate's validity window (UTC timestamps) and serial."""

    not_before: float
    not_after: float
    serial: int

    def remaining(self, now: float) -> float:
        """The fraction of the validity still ahead at ``now`` (0 once expired)."""
        span = self.not_after - self.not_before
        return max(0.0, (self.not_after - now) / span) if span > 0 else 0.0


def validity(cert_file: Path) -> Validity:
    """Read the validity window of a PEM certificate."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())
    except (OSError, ValueError) as exc:
        raise ProvisionError(f"cannot read the device certificate {cert_file}: {exc}") from None
    return Validity(
        cert.not_valid_before_utc.timestamp(),
        cert.not_valid_after_utc.timestamp(),
        cert.serial_number,
    )


def _identity_files(cfg: AgentConfig) -> tuple[Path, Path]:
    ident = cfg.identity
    if not ident.cloud or not ident.cert_file or not ident.key_file:
        raise ProvisionError(
            "this config has no provisioned identity ([identity] cloud, cert_file and "
            "key_file); run `edgefleet agent provision` first"
        )
    return Path(ident.cert_file), Path(ident.key_file)


def renew(cfg: AgentConfig, *, timeout: float = 30.0) -> Validity:
    """Renew the certificate now: a new key, a CSR signed for by the current key."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    cert_file, key_file = _identity_files(cfg)
    try:
        current = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ProvisionError(f"cannot read the device key {key_file}: {exc}") from None
    if not isinstance(current, ec.EllipticCurvePrivateKey):
        raise ProvisionError(f"{key_file} is not an EC key; provision the device again")
    pending = key_file.with_name(key_file.name + ".next")
    # The new key is kept before asking: if the answer is lost, the retry sends the same key
    # and the cloud hands back the certificate it already issued for it.
    if pending.exists():
        key: Any = serialization.load_pem_private_key(pending.read_bytes(), password=None)
        none = serialization.NoEncryption()
        pem = pending.read_bytes()
        ssh = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, none
        )
        pub = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
    else:
        key, pem, ssh, pub = _new_key()
        _write(pending, pem, 0o600)
    csr = _csr(key, cfg.device.id)
    sig = current.sign(RENEW_CONTEXT + csr.encode(), ec.ECDSA(hashes.SHA256()))
    body = {
        "certificate": cert_file.read_text(),
        "csr": csr,
        "signature": base64.b64encode(sig).decode(),
    }
    answer = _post(cfg.identity.cloud.rstrip("/") + "/v1/provision/renew", body, timeout)
    # The transport builds a new TLS context at every connect from these paths, so the next
    # reconnect uses the new pair; the old certificate stays valid until its own expiry.
    _write(cert_file, answer["certificate"].encode(), 0o644)
    _write(key_file, pem, 0o600)
    fl = cfg.fl
    if fl.auth_private_key and fl.auth_public_key:
        _write(Path(fl.auth_private_key), ssh, 0o600)
        _write(Path(fl.auth_public_key), pub + f" {cfg.device.id}\n".encode(), 0o644)
    pending.unlink(missing_ok=True)
    new = validity(cert_file)
    log.info(
        "%s: renewed the device certificate (serial %x, valid until %s)",
        cfg.device.id,
        new.serial,
        dt.datetime.fromtimestamp(new.not_after, dt.UTC).isoformat(timespec="seconds"),
    )
    return new


def renew_if_due(
    cfg: AgentConfig, *, now: float | None = None, timeout: float = 30.0
) -> Validity | None:
    """Renew when less than ``[identity] renew_below`` of the validity remains; else None."""
    import time

    cert_file, _ = _identity_files(cfg)
    current = validity(cert_file)
    at = time.time() if now is None else now
    if current.remaining(at) >= cfg.identity.renew_below:
        return None
    return renew(cfg, timeout=timeout)


async def renewal_loop(
    cfg: AgentConfig,
    stop: asyncio.Event,
    *,
    on_renewed: Callable[[Validity], None] | None = None,
) -> None:
    """Check every ``[identity] check_every_s`` and renew when due, until ``stop`` is set.

    Failures are logged and retried at the next check: an unreachable cloud must not stop
    an agent whose certificate is still valid.
    """
    if not cfg.identity.cloud:
        return
    loop = asyncio.get_running_loop()
    every = cfg.identity.check_every_s
    while not stop.is_set():
        try:
            new = await loop.run_in_executor(None, lambda: renew_if_due(cfg))
        except EdgefleetError as exc:
            log.warning("%s: certificate renewal failed: %s", cfg.device.id, exc)
        else:
            if new is not None and on_renewed is not None:
                on_renewed(new)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every)
