"""SQLite backend (the default): one file, WAL journal, via sqlite-utils."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import sqlite_utils

from edgefleet.cloud.errors import StoreError, StoreRefused, StoreURLError
from edgefleet.cloud.store.migrations import SQLITE
from edgefleet.cloud.store.sql import Cursor, SqlStore

Synchronous = Literal["OFF", "NORMAL", "FULL"]
# What binding or a constraint raises for a value SQLite cannot hold (an integer past 64 bits,
# a NULL where NOT NULL): the batch's data is at fault, and retrying it cannot help.
_REFUSED = (
    sqlite3.IntegrityError,
    sqlite3.DataError,
    OverflowError,
    ValueError,
    TypeError,
)


def sqlite_path(url: str) -> Path:
    """The file of a ``sqlite:///path`` URL (``sqlite:////abs/path`` or relative)."""
    if not url.startswith("sqlite:///"):
        raise StoreURLError(f"{url!r} is not a sqlite URL: write sqlite:///path/to/edgefleet.db")
    path = url.removeprefix("sqlite:///")
    if not path:
        raise StoreURLError(f"{url!r} names no file: write sqlite:///path/to/edgefleet.db")
    return Path(path)


class SqliteStore(SqlStore):
    """Telemetry in one SQLite file in WAL mode: readers never block the ingest writer."""

    dialect = SQLITE

    def __init__(self, url: str, *, synchronous: Synchronous = "FULL") -> None:
        super().__init__()
        self.url = url
        self.path = sqlite_path(url)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # isolation_level=None: we issue BEGIN IMMEDIATE / COMMIT ourselves, so one batch
            # is exactly one transaction. The store's lock serialises threads.
            conn = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None, timeout=30
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from None
        self.db = sqlite_utils.Database(conn)
        self.db.enable_wal()  # type: ignore[no-untyped-call]
        # FULL syncs the WAL at every commit: a commit-ack then survives a power cut, not
        # only a crash of the process (docs/cloud.md, "Durability").
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        conn.execute("PRAGMA foreign_keys = ON")
        self._conn = conn

    @contextmanager
    def _transaction(self) -> Iterator[Cursor]:
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot start a transaction on {self.path}: {exc}") from None
        try:
            yield Cursor(conn, self.dialect)
        except _REFUSED as exc:
            conn.execute("ROLLBACK")
            raise StoreRefused(f"{self.path} refused a value: {exc}") from exc
        except sqlite3.Error as exc:
            conn.execute("ROLLBACK")
            raise StoreError(f"write to {self.path} failed: {exc}") from exc
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @contextmanager
    def _reader(self) -> Iterator[Cursor]:
        try:
            yield Cursor(self._conn, self.dialect)
        except sqlite3.Error as exc:
            raise StoreError(f"read from {self.path} failed: {exc}") from exc

    def _table_exists(self, cur: Cursor, table: str) -> bool:
        return table in self.db.table_names()

    def close(self) -> None:
        """Close the database file."""
        with self._lock:
            self._conn.close()
