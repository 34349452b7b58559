"""Claim tokens and issued certificates, kept in the cloud's store (migration 4).

Claim tokens are stored as SHA-256 hashes only: a token has 256 random bits, so a hash that
leaks cannot be turned back into one. A claim is spent in the same transaction that checks
it, so two devices racing for the last use of a token cannot both win.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from edgefleet.cloud.identity.errors import ClaimRefused, IdentityError, UnknownIdentity
from edgefleet.cloud.store.base import TelemetryStore
from edgefleet.cloud.store.sql import Cursor, SqlStore
from edgefleet.protocol.topics import validate_id

TOKEN_PREFIX = "efc_"  # noqa: S105 - a prefix that makes leaked tokens findable, not a secret
IdentityState = Literal["active", "superseded", "revoked"]


def hash_token(token: str) -> str:
    """The hex SHA-256 a claim token is stored under."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Claim:
    """What a claim token lets a device become: a member of ``fleet`` with ``tags``."""

    token_hash: str
    fleet: str
    tags: tuple[str, ...]
    uses_max: int
    uses_left: int
    expires_at: float
    created_at: float
    created_by: str


@dataclass(frozen=True, slots=True)
class Identity:
    """One certificate issued to a device (a device has one per provisioning or renewal)."""

    serial: int
    device_id: str
    fleet: str
    state: IdentityState
    not_before: float
    not_after: float
    public_key: str
    cert: str
    node_public_key: str
    successor: int | None
    created_at: float
    revoked_at: float | None

    def summary(self) -> dict[str, Any]:
        """The identity as ``edgefleet device list`` and the API show it (no PEM blobs)."""
        return {
            "device_id": self.device_id,
            "fleet": self.fleet,
            "serial": f"{self.serial:x}",
            "state": self.state,
            "not_before": self.not_before,
            "not_after": self.not_after,
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
        }


def _identity(r: dict[str, Any]) -> Identity:
    return Identity(
        serial=int(r["serial"], 16),
        device_id=r["device_id"],
        fleet=r["fleet"],
        state=r["state"],
        not_before=float(r["not_before"]),
        not_after=float(r["not_after"]),
        public_key=r["public_key"],
        cert=r["cert"],
        node_public_key=r["node_public_key"],
        successor=int(r["successor"], 16) if r["successor"] else None,
        created_at=float(r["created_at"]),
        revoked_at=None if r["revoked_at"] is None else float(r["revoked_at"]),
    )


class IdentityBook:
    """Reads and writes claim tokens and identities through the cloud's SQL store."""

    def __init__(self, store: TelemetryStore) -> None:
        if not isinstance(store, SqlStore):
            raise IdentityError(f"device identities need a SQL store, not {type(store).__name__}")
        self._store = store

    # The store's own transaction and lock: identities share its connection and migrations.
    def _tx(self) -> Any:
        return self._store._transaction()

    def _read(self) -> Any:
        return self._store._reader()

    # -- claim tokens ----------------------------------------------------------------------
    def create_claim(
        self,
        fleet: str,
        tags: Sequence[str] = (),
        *,
        uses: int = 1,
        ttl_s: float = 900.0,
        created_by: str = "admin",
    ) -> tuple[str, Claim]:
        """A new claim token (shown once, never stored) and its stored record."""
        validate_id(fleet, "fleet")
        if not 1 <= uses <= 10_000:
            raise IdentityError(f"--uses must be between 1 and 10000, not {uses}")
        if not 0 < ttl_s <= 30 * 86400:
            raise IdentityError(f"--ttl must be more than 0 and at most 30 days, not {ttl_s} s")
        for tag in tags:
            validate_id(tag, "tag")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = time.time()
        claim = Claim(
            hash_token(token), fleet, tuple(sorted(set(tags))), uses, uses, now + ttl_s, now,
            created_by,
        )  # fmt: skip
        with self._store._lock, self._tx() as cur:
            cur.execute(
                "INSERT INTO claim_tokens (token_hash, fleet, tags, uses_max, uses_left, "
                "expires_at, created_at, created_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    claim.token_hash, fleet, json.dumps(list(claim.tags)), uses, uses,
                    claim.expires_at, now, created_by,
                ),
            )  # fmt: skip
        return token, claim

    def spend_claim(self, cur: Cursor, token: str, fleet: str | None, now: float) -> Claim:
        """Check ``token`` and take one use of it inside the caller's transaction."""
        rows = cur.query("SELECT * FROM claim_tokens WHERE token_hash = ?", (hash_token(token),))
        # One message for unknown, used up and expired: a guesser learns nothing from it.
        if not rows or rows[0]["uses_left"] < 1 or rows[0]["expires_at"] <= now:
            raise ClaimRefused(
                "the claim token is unknown, used up or expired; ask an admin for a new one "
                "(`edgefleet device claim-token --fleet F`)"
            )
        r = rows[0]
        if fleet is not None and fleet != r["fleet"]:
            raise ClaimRefused(
                f"the claim token is for another fleet than {fleet!r}; use a token made with "
                f"--fleet {fleet}"
            )
        n = cur.execute(
            "UPDATE claim_tokens SET uses_left = uses_left - 1 "
            "WHERE token_hash = ? AND uses_left > 0",
            (r["token_hash"],),
        )
        if n != 1:
            raise ClaimRefused("the claim token was used up meanwhile; ask for a new one")
        return Claim(
            r["token_hash"], r["fleet"], tuple(json.loads(r["tags"])), int(r["uses_max"]),
            int(r["uses_left"]) - 1, float(r["expires_at"]), float(r["created_at"]),
            r["created_by"],
        )  # fmt: skip

    # -- identities ------------------------------------------------------------------------
    def insert(self, cur: Cursor, ident: Identity, claim_hash: str | None) -> None:
        """Record a newly issued certificate inside the caller's transaction."""
        cur.execute(
            "INSERT INTO identities (serial, device_id, fleet, state, not_before, not_after, "
            "public_key, cert, node_public_key, claim_hash, successor, created_at, revoked_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                f"{ident.serial:x}", ident.device_id, ident.fleet, ident.state,
                ident.not_before, ident.not_after, ident.public_key, ident.cert,
                ident.node_public_key, claim_hash, None, ident.created_at, None,
            ),
        )  # fmt: skip

    def undo(self, serial: int, claim_hash: str) -> None:
        """Forget a certificate whose device never got it, and give its claim's use back."""
        with self._store._lock, self._tx() as cur:
            cur.execute("DELETE FROM identities WHERE serial = ?", (f"{serial:x}",))
            cur.execute(
                "UPDATE claim_tokens SET uses_left = uses_left + 1 WHERE token_hash = ?",
                (claim_hash,),
            )

    def supersede(self, cur: Cursor, device_id: str, successor: int) -> None:
        """Mark every active certificate of ``device_id`` but ``successor`` superseded."""
        cur.execute(
            "UPDATE identities SET state = 'superseded', successor = ? "
            "WHERE device_id = ? AND state = 'active' AND serial <> ?",
            (f"{successor:x}", device_id, f"{successor:x}"),
        )

    def transaction(self) -> Any:
        """The store's lock and a transaction, for callers that spend and insert together."""
        return _Locked(self._store)

    def by_serial(self, serial: int) -> Identity:
        """One issued certificate by serial number."""
        with self._store._lock, self._read() as cur:
            rows = cur.query("SELECT * FROM identities WHERE serial = ?", (f"{serial:x}",))
        if not rows:
            raise UnknownIdentity(f"no certificate with serial {serial:x} was issued here")
        return _identity(rows[0])

    def of_device(self, device_id: str) -> list[Identity]:
        """Every certificate issued to ``device_id``, oldest first."""
        with self._store._lock, self._read() as cur:
            rows = cur.query(
                "SELECT * FROM identities WHERE device_id = ? ORDER BY created_at", (device_id,)
            )
        return [_identity(r) for r in rows]

    def all(self, *, fleet: str | None = None) -> list[Identity]:
        """Every issued certificate (of one fleet), by device then age."""
        sql, params = "SELECT * FROM identities", ()
        if fleet is not None:
            sql, params = sql + " WHERE fleet = ?", (fleet,)  # type: ignore[assignment]
        with self._store._lock, self._read() as cur:
            rows = cur.query(sql + " ORDER BY device_id, created_at", params)
        return [_identity(r) for r in rows]

    def revoke(self, device_id: str) -> list[Identity]:
        """Revoke every certificate of ``device_id`` and mark it offline; the ones revoked now."""
        now = time.time()
        with self._store._lock, self._tx() as cur:
            rows = cur.query(
                "SELECT * FROM identities WHERE device_id = ? AND state <> 'revoked'",
                (device_id,),
            )
            cur.execute(
                "UPDATE identities SET state = 'revoked', revoked_at = ? "
                "WHERE device_id = ? AND state <> 'revoked'",
                (now, device_id),
            )
            # The broker cuts the session without its will, so no "offline" would ever come.
            cur.execute(
                "UPDATE devices SET online = 0, status_reason = 'revoked' WHERE device_id = ?",
                (device_id,),
            )
        return [_identity(r) for r in rows]

    def revoked_serials(self) -> list[int]:
        """Serials of every revoked certificate still within its validity (the CRL's list)."""
        with self._store._lock, self._read() as cur:
            rows = cur.query(
                "SELECT serial FROM identities WHERE state = 'revoked' AND not_after > ?",
                (time.time(),),
            )
        return [int(r["serial"], 16) for r in rows]


class _Locked:
    """The store's lock held around one of its transactions."""

    def __init__(self, store: SqlStore) -> None:
        self._store = store
        self._cm: Any = None

    def __enter__(self) -> Cursor:
        self._store._lock.acquire()
        try:
            self._cm = self._store._transaction()
            cur: Cursor = self._cm.__enter__()
        except BaseException:
            self._store._lock.release()
            raise
        return cur

    def __exit__(self, *exc: Any) -> None:
        try:
            self._cm.__exit__(*exc)
        finally:
            self._store._lock.release()
