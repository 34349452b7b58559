"""PostgreSQL backend (for scale and several ingest workers), via psycopg 3."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from edgefleet.cloud.errors import StoreError, StoreRefused
from edgefleet.cloud.store.migrations import POSTGRES
from edgefleet.cloud.store.sql import Cursor, SqlStore

# A value PostgreSQL cannot hold: NUL in text (psycopg refuses it before sending), a number
# out of range, a violated constraint. The batch's data is at fault; retrying cannot help.
_REFUSED = (psycopg.DataError, psycopg.IntegrityError, OverflowError, ValueError, TypeError)


class PostgresStore(SqlStore):
    """Telemetry in PostgreSQL; ``executemany`` runs in pipeline mode (one round trip)."""

    dialect = POSTGRES

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        try:
            self._conn = psycopg.connect(url, autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to {_redact(url)}: {exc}") from None

    @contextmanager
    def _transaction(self) -> Iterator[Cursor]:
        try:
            with self._conn.transaction(), self._conn.cursor() as raw:
                yield Cursor(raw, self.dialect)
        except _REFUSED as exc:
            raise StoreRefused(f"{_redact(self.url)} refused a value: {exc}") from exc
        except psycopg.Error as exc:
            raise StoreError(f"write to {_redact(self.url)} failed: {exc}") from exc

    @contextmanager
    def _reader(self) -> Iterator[Cursor]:
        try:
            with self._conn.cursor() as raw:
                yield Cursor(raw, self.dialect)
        except psycopg.Error as exc:
            raise StoreError(f"read from {_redact(self.url)} failed: {exc}") from exc

    def _table_exists(self, cur: Cursor, table: str) -> bool:
        rows = cur.query("SELECT to_regclass(?) IS NOT NULL AS present", (table,))
        return bool(rows[0]["present"])

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    head, sep, tail = url.rpartition("@")
    if not sep or ":" not in head.split("//", 1)[-1]:
        return url
    scheme, _, creds = head.partition("//")
    return f"{scheme}//{creds.split(':', 1)[0]}:***@{tail}"
