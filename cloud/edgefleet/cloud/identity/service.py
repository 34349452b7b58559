"""Provisioning, renewal and revocation: one device key pair becomes the device's identity.

The device makes its own EC key pair and sends a CSR with a claim token; the cloud checks the
token (spending one use), signs the key into a certificate from the project CA (CN = device
id) and answers with everything the device needs, so one key serves MQTT (the TLS client
certificate), Flower (the SuperNode key is the same key in OpenSSH format) and downloads
(a device token issued beside it). Renewal is proven by the current certificate's key;
revocation cuts the broker and the API off together.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgefleet.cloud.auth import TokenStore, issue_device_token, revoke_device_tokens
from edgefleet.cloud.errors import Conflict
from edgefleet.cloud.identity.book import Identity, IdentityBook
from edgefleet.cloud.identity.ca import ProjectCA, check_device_key, common_name, write_private
from edgefleet.cloud.identity.errors import (
    BadRequestKey,
    IdentityError,
    RenewRefused,
    UnknownIdentity,
)
from edgefleet.cloud.store.base import TelemetryStore
from edgefleet.cloud.store.sql import Cursor
from edgefleet.protocol.errors import EdgefleetError, TopicError
from edgefleet.protocol.topics import validate_id

log = logging.getLogger(__name__)

# What a renewal's signature covers, before the new CSR's bytes: a signature made for another
# purpose with the device key can never pass as a renewal.
RENEW_CONTEXT = b"edgefleet-renew/1\n"
RECORD_KEY_BYTES = 32


class RecordKeyRegistry(Protocol):
    """T1's record keys (``edgefleet.cloud.trust.RecordKeys``), as provisioning uses them."""

    def register(self, device_id: str, key: bytes) -> None:
        """Remember ``key`` as the MAC key of ``device_id``'s record batches."""
        ...


class BrokerAuthorityLike(Protocol):
    """The broker side of an identity (``edgefleet.cloud.broker.production.BrokerAuthority``)."""

    def enrol(self, device_id: str, fleet: str) -> None:
        """Let ``device_id`` of ``fleet`` connect with its own ACLs."""
        ...

    def revoke(self, device_id: str) -> None:
        """Cut ``device_id`` off at the broker now."""
        ...


class DeviceTokens(Protocol):
    """T2's device API tokens: one call issues, one revokes."""

    def issue(self, device_id: str) -> str:
        """A new device token (its secret)."""
        ...

    def revoke(self, device_id: str) -> int:
        """Revoke the device's tokens; how many."""
        ...


class AuthTokens:
    """T2's :class:`~edgefleet.cloud.auth.tokens.TokenStore` as provisioning uses it."""

    def __init__(self, store: TokenStore) -> None:
        self._store = store

    def issue(self, device_id: str) -> str:
        """A new device token; the device's earlier ones are revoked."""
        return issue_device_token(self._store, device_id)

    def revoke(self, device_id: str) -> int:
        """Revoke every token of the device."""
        return revoke_device_tokens(self._store, device_id)


@dataclass(frozen=True, slots=True)
class IdentitySettings:
    """What provisioning hands out besides the certificate (docs/security.md)."""

    directory: Path
    # The broker URL devices dial (mqtts:// for a TLS listener); None: the cloud's own.
    device_broker_url: str | None = None
    cert_days: int = 90
    # Overrides cert_days: tests use seconds to exercise renewal.
    cert_lifetime_s: float | None = None
    command_keys: tuple[Path, ...] = ()
    trusted_keys: tuple[Path, ...] = ()

    def lifetime(self) -> dt.timedelta:
        """How long a new device certificate is valid."""
        if self.cert_lifetime_s is not None:
            return dt.timedelta(seconds=self.cert_lifetime_s)
        return dt.timedelta(days=self.cert_days)


@dataclass(slots=True)
class Provisioner:
    """Issues, renews and revokes device identities (one per cloud, shared by its routes)."""

    settings: IdentitySettings
    store: TelemetryStore
    broker_url: Callable[[], str]
    tokens: DeviceTokens | None = None
    record_keys: RecordKeyRegistry | None = None
    broker: BrokerAuthorityLike | None = None
    ca: ProjectCA = field(init=False)
    book: IdentityBook = field(init=False)

    def __post_init__(self) -> None:
        self.ca = ProjectCA.load_or_create(self.settings.directory / "ca")
        self.book = IdentityBook(self.store)
        self.write_crl()

    @property
    def node_keys_dir(self) -> Path:
        """Where each device's SuperNode public key is kept (``edgefleet fl start --node-key``)."""
        return self.settings.directory / "node-keys"

    @property
    def crl_path(self) -> Path:
        """The CRL file, rewritten at every revocation (a broker's ``crlfile``)."""
        return self.settings.directory / "ca" / "crl.pem"

    # -- provisioning ----------------------------------------------------------------------
    def provision(
        self, token: str, csr_pem: str, device_id: str | None = None, fleet: str | None = None
    ) -> dict[str, Any]:
        """Spend a claim token on a CSR: the device's certificate and configuration."""
        public = _csr_key(csr_pem)
        if device_id is not None:
            _check_id(device_id)
        now = time.time()
        with self.book.transaction() as cur:
            claim = self.book.spend_claim(cur, token, fleet, now)
            device = device_id or f"{claim.fleet}-{secrets.token_hex(4)}"
            _refuse_taken(cur, device)
            ident = self._issue(public, device, claim.fleet)
            self.book.insert(cur, ident, claim.token_hash)
            _enrol_device_row(cur, device, claim.fleet, claim.tags, now)
        record_key = secrets.token_bytes(RECORD_KEY_BYTES)
        try:
            if self.record_keys is not None:
                self.record_keys.register(device, record_key)
            if self.broker is not None:
                self.broker.enrol(device, claim.fleet)
            device_token = self.tokens.issue(device) if self.tokens is not None else None
        except EdgefleetError as exc:
            # The device never got an answer: give the claim's use back and free the id, so
            # the same token works once the broker (or store) is back.
            self.book.undo(ident.serial, claim.token_hash)
            raise IdentityError(
                f"provisioning {device} failed and was undone ({exc}); retry with the same "
                "claim token"
            ) from exc
        self._write_node_key(ident)
        log.info("provisioned %s in fleet %s (serial %x)", device, claim.fleet, ident.serial)
        return {
            **self._answer(ident),
            "tags": list(claim.tags),
            "broker_url": self.settings.device_broker_url or self.broker_url(),
            "command_keys": [_read_key(p) for p in self.settings.command_keys if p.is_file()],
            "trusted_keys": [_read_key(p) for p in self.settings.trusted_keys],
            "record_key": base64.b64encode(record_key).decode()
            if self.record_keys is not None
            else None,
            "device_token": device_token,
        }

    def renew(self, cert_pem: str, csr_pem: str, signature_b64: str) -> dict[str, Any]:
        """A new certificate for the key in ``csr_pem``, proven by the current certificate."""
        try:
            current = self.ca.verify_issued(cert_pem.encode())
        except BadRequestKey as exc:
            raise RenewRefused(f"renewal refused: {exc}") from None
        try:
            signature = base64.b64decode(signature_b64, validate=True)
            key = current.public_key()
            if not isinstance(key, ec.EllipticCurvePublicKey):
                raise InvalidSignature
            key.verify(signature, RENEW_CONTEXT + csr_pem.encode(), ec.ECDSA(hashes.SHA256()))
        except (ValueError, InvalidSignature):
            raise RenewRefused(
                "renewal refused: the request is not signed by the current certificate's key"
            ) from None
        public = _csr_key(csr_pem)
        held = self.book.by_serial(current.serial_number)
        device = common_name(current)
        if held.device_id != device:
            raise RenewRefused("renewal refused: the certificate does not match its record")
        if held.state == "revoked":
            raise RenewRefused(f"renewal refused: {device} was revoked; provision it again")
        if held.state == "superseded":
            # A lost answer is retried with the old certificate: the same new key gets the
            # certificate already issued for it, nothing more.
            if held.successor is not None:
                nxt = self.book.by_serial(held.successor)
                if nxt.state == "active" and nxt.public_key == _spki(public):
                    return self._answer(nxt)
            raise RenewRefused(f"renewal refused: this certificate of {device} was replaced")
        with self.book.transaction() as cur:
            ident = self._issue(public, device, held.fleet)
            self.book.insert(cur, ident, None)
            self.book.supersede(cur, device, ident.serial)
        self._write_node_key(ident)
        log.info("renewed %s (serial %x -> %x)", device, held.serial, ident.serial)
        return self._answer(ident)

    # -- revocation ------------------------------------------------------------------------
    def revoke(self, device_id: str) -> dict[str, Any]:
        """Revoke every certificate and token of ``device_id`` and cut it off at the broker."""
        if not self.book.of_device(device_id):
            raise UnknownIdentity(
                f"no identity was issued to {device_id!r}: `edgefleet device list` shows them"
            )
        revoked = self.book.revoke(device_id)
        tokens = self.tokens.revoke(device_id) if self.tokens is not None else 0
        self.write_crl()
        if self.broker is not None:
            self.broker.revoke(device_id)
        (self.node_keys_dir / f"{device_id}.pub").unlink(missing_ok=True)
        log.warning("revoked %s: %d certificate(s), %d token(s)", device_id, len(revoked), tokens)
        return {
            "device_id": device_id,
            "certificates": [f"{i.serial:x}" for i in revoked],
            "tokens": tokens,
            "broker": self.broker is not None,
        }

    def current_crl(self) -> bytes:
        """The CA's CRL (PEM) over every revoked, unexpired certificate (a broker's ``crl``)."""
        return self.ca.crl_pem(self.book.revoked_serials())

    def write_crl(self) -> Path:
        """Rewrite the CRL file from the store's revoked serials."""
        write_private(self.crl_path, self.current_crl(), 0o644)
        return self.crl_path

    # -- helpers ---------------------------------------------------------------------------
    def _issue(self, public: ec.EllipticCurvePublicKey, device: str, fleet: str) -> Identity:
        pem = self.ca.issue_device_cert(public, device, fleet, lifetime=self.settings.lifetime())
        cert = x509.load_pem_x509_certificate(pem)
        return Identity(
            serial=cert.serial_number,
            device_id=device,
            fleet=fleet,
            state="active",
            not_before=cert.not_valid_before_utc.timestamp(),
            not_after=cert.not_valid_after_utc.timestamp(),
            public_key=_spki(public),
            cert=pem.decode(),
            node_public_key=_openssh(public, device),
            successor=None,
            created_at=time.time(),
            revoked_at=None,
        )

    def _answer(self, ident: Identity) -> dict[str, Any]:
        return {
            "device_id": ident.device_id,
            "fleet": ident.fleet,
            "serial": f"{ident.serial:x}",
            "not_after": ident.not_after,
            "certificate": ident.cert,
            "ca": self.ca.ca_pem().decode(),
            "node_public_key": ident.node_public_key,
        }

    def _write_node_key(self, ident: Identity) -> None:
        path = self.node_keys_dir / f"{ident.device_id}.pub"
        write_private(path, ident.node_public_key.encode(), 0o644)


def _check_id(device_id: str) -> None:
    try:
        validate_id(device_id, "device id")
    except TopicError as exc:
        raise IdentityError(str(exc)) from None


def _csr_key(csr_pem: str) -> ec.EllipticCurvePublicKey:
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
    except ValueError:
        raise BadRequestKey("the CSR is not a PEM certificate signing request") from None
    if not csr.is_signature_valid:
        raise BadRequestKey("the CSR's signature does not match its key")
    return check_device_key(csr.public_key())


def _spki(key: ec.EllipticCurvePublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def _openssh(key: ec.EllipticCurvePublicKey, device: str) -> str:
    raw = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return f"{raw.decode()} {device}\n"


def _read_key(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise IdentityError(f"cannot read key {path}: {exc.strerror}") from None


def _refuse_taken(cur: Cursor, device: str) -> None:
    rows = cur.query(
        "SELECT serial FROM identities WHERE device_id = ? AND state <> 'revoked'", (device,)
    )
    if rows:
        raise Conflict(
            f"{device!r} already holds an identity; revoke it first (`edgefleet device revoke "
            f"{device}`) to provision a replacement under the same id"
        )


def _enrol_device_row(
    cur: Cursor, device: str, fleet: str, tags: Sequence[str], now: float
) -> None:
    # The device is listed (offline) from now on, with the claim's fleet and tags; ingest's
    # upsert on its first status keeps the tags.
    cur.execute(
        "INSERT INTO devices (device_id, fleet, first_seen, last_seen, tags) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (device_id) DO UPDATE SET fleet = excluded.fleet, "
        "tags = CASE WHEN excluded.tags <> '[]' THEN excluded.tags ELSE devices.tags END",
        (device, fleet, now, now, json.dumps(sorted(set(tags)))),
    )
