"""API and device tokens: random, shown once, kept only as their SHA-256."""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from edgefleet.cloud.auth.errors import Unauthenticated
from edgefleet.cloud.auth.roles import Principal, Role
from edgefleet.cloud.errors import NotFound
from edgefleet.protocol.errors import ConfigError

# A token is `ef_` + 8 hex of its id + `_` + 43 chars of 32 random bytes. 256 bits of entropy
# make a guess hopeless, so one SHA-256 (not a slow password hash) is enough to keep a stolen
# database from giving working tokens, and it lets a request be checked in microseconds.
TOKEN_PREFIX = "ef_"  # noqa: S105 - a prefix, not a secret
_LAST_USED_EVERY_S = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_tokens (
    id TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    kind TEXT NOT NULL,
    device_id TEXT,
    created_at REAL NOT NULL,
    last_used_at REAL,
    revoked_at REAL
);
"""


def token_hash(token: str) -> str:
    """The stored form of a token."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A token's record (never its secret)."""

    id: str
    name: str
    role: Role
    kind: str
    device_id: str | None
    created_at: float
    last_used_at: float | None
    revoked_at: float | None

    def to_json(self) -> dict[str, object]:
        """The record as the API and `token list --json` show it."""
        return {
            "id": self.id,
            "name": self.name,
            "role": self.role.value,
            "kind": self.kind,
            "device_id": self.device_id,
            "created_at": self.created_at,
            "last_used_at": self.last_used_at,
            "revoked_at": self.revoked_at,
        }


class TokenStore:
    """Tokens in a small SQLite file of the cloud's workdir (``<workdir>/auth.db``).

    Kept apart from the telemetry store so credentials never travel with telemetry backups and
    work the same with a PostgreSQL store.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        if self.path != ":memory:":
            Path(self.path).chmod(0o600)
        self._lock = threading.Lock()
        self._touched: dict[str, float] = {}

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def create(
        self, name: str, role: Role, *, kind: str = "token", device_id: str | None = None
    ) -> tuple[str, TokenInfo]:
        """A new token; returns its secret (shown once, never stored) and its record."""
        if not name.strip():
            raise ConfigError("a token needs a name (who or what uses it)")
        token_id = secrets.token_hex(4)
        secret = f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
        now = time.time()
        with self._lock:
            self._db.execute(
                "INSERT INTO api_tokens (id, hash, name, role, kind, device_id, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (token_id, token_hash(secret), name, role.value, kind, device_id, now),
            )
        return secret, TokenInfo(token_id, name, role, kind, device_id, now, None, None)

    def list(self, *, include_revoked: bool = True) -> list[TokenInfo]:
        """Every token's record, oldest first."""
        sql = "SELECT * FROM api_tokens"
        if not include_revoked:
            sql += " WHERE revoked_at IS NULL"
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY created_at").fetchall()
        return [_info(r) for r in rows]

    def revoke(self, token_id: str) -> TokenInfo:
        """Revoke a token by id (its next request gets 401)."""
        with self._lock:
            self._db.execute(
                "UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (time.time(), token_id),
            )
            row = self._db.execute("SELECT * FROM api_tokens WHERE id = ?", (token_id,)).fetchone()
        if row is None:
            raise NotFound(f"no token with id {token_id!r}: `edgefleet cloud token list` shows ids")
        return _info(row)

    def revoke_device(self, device_id: str) -> int:
        """Revoke every token of a device; the count revoked."""
        with self._lock:
            cur = self._db.execute(
                "UPDATE api_tokens SET revoked_at = ? WHERE device_id = ? AND kind = 'device'"
                " AND revoked_at IS NULL",
                (time.time(), device_id),
            )
        return cur.rowcount

    def count(self) -> int:
        """How many tokens exist (revoked included)."""
        with self._lock:
            (n,) = self._db.execute("SELECT COUNT(*) FROM api_tokens").fetchone()
        return int(n)

    def live(self, token_id: str | None) -> bool:
        """True when the token with this id exists and is not revoked."""
        if token_id is None:
            return False
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM api_tokens WHERE id = ? AND revoked_at IS NULL", (token_id,)
            ).fetchone()
        return row is not None

    def authenticate(self, token: str) -> Principal:
        """The principal of a presented token; Unauthenticated if unknown or revoked."""
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM api_tokens WHERE hash = ?", (token_hash(token),)
            ).fetchone()
        if row is None:
            raise Unauthenticated("the token is not known to this cloud")
        info = _info(row)
        if info.revoked_at is not None:
            raise Unauthenticated(f"token {info.id} ({info.name}) was revoked")
        self._touch(info.id)
        if info.kind == "device":
            return Principal(info.name, info.role, "device", info.device_id, info.id)
        return Principal(info.name, info.role, "token", None, info.id)

    def _touch(self, token_id: str) -> None:
        # One write a minute per token, not one per request.
        now = time.time()
        if now - self._touched.get(token_id, 0.0) < _LAST_USED_EVERY_S:
            return
        self._touched[token_id] = now
        with self._lock:
            self._db.execute("UPDATE api_tokens SET last_used_at = ? WHERE id = ?", (now, token_id))


def _info(row: tuple[object, ...]) -> TokenInfo:
    token_id, _hash, name, role, kind, device_id, created, used, revoked = row
    return TokenInfo(
        str(token_id),
        str(name),
        Role(str(role)),
        str(kind),
        None if device_id is None else str(device_id),
        float(created),  # type: ignore[arg-type]
        None if used is None else float(used),  # type: ignore[arg-type]
        None if revoked is None else float(revoked),  # type: ignore[arg-type]
    )


def issue_device_token(store: TokenStore, device_id: str) -> str:
    """A device's download credential (called at provisioning); its secret, shown once."""
    store.revoke_device(device_id)  # one live credential per device: re-provisioning replaces it
    secret, _ = store.create(f"device:{device_id}", Role.viewer, kind="device", device_id=device_id)
    return secret


def revoke_device_tokens(store: TokenStore, device_id: str) -> int:
    """Revoke a device's download credentials (called at `edgefleet device revoke`)."""
    return store.revoke_device(device_id)
