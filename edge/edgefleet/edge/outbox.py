"""The durable store-and-forward queue: SQLite in WAL mode, one writer, bounded with counted drops.

Every record the device produces is written here before it is sent, and deleted only when the
cloud's :class:`~edgefleet.protocol.messages.Commit` covers it: a broker's PUBACK is not
durability (docs/agent.md, "Outbox"). ``synchronous=FULL`` makes a committed row survive a power
cut. Past ``max_records`` or ``max_bytes`` the oldest rows are dropped and counted, and the
count is itself reported in health telemetry.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

from edgefleet.edge.errors import OutboxError
from edgefleet.protocol.messages import CommitRange

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    boot_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    stream TEXT NOT NULL,
    topic TEXT NOT NULL,
    grp TEXT NOT NULL,
    single INTEGER NOT NULL,
    payload BLOB NOT NULL,
    size INTEGER NOT NULL,
    UNIQUE (boot_id, seq)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS boots (
    boot_id TEXT PRIMARY KEY, started_at REAL NOT NULL, last_seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS training_samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    t REAL NOT NULL,
    model TEXT NOT NULL,
    x BLOB NOT NULL,
    y BLOB
);
"""


class Row(NamedTuple):
    """One record to store: identity, where it goes, how it is grouped, and its encoded bytes.

    ``single`` rows hold a whole encoded message; the others hold one encoded record that the
    uplink groups with its neighbours (same boot, stream and ``grp``) into a batch message.
    """

    boot_id: str
    seq: int
    stream: str
    topic: str
    grp: str
    single: bool
    payload: bytes


class StoredRow(NamedTuple):
    """A row read back from the outbox, with its insertion order ``id``."""

    id: int
    boot_id: str
    seq: int
    stream: str
    topic: str
    grp: str
    single: bool
    payload: bytes


# SQLite page cache of the outbox connection, KiB (SQLite's default is 2000 KiB).
CACHE_KIB = 512


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """Depth, size, drops and the seq high-water mark of every boot."""

    depth: int
    bytes: int
    drops: int
    boots: dict[str, int]
    training_samples: int


class Outbox:
    """A bounded SQLite queue of records; use it from one thread only (the one writer)."""

    def __init__(
        self,
        path: Path,
        *,
        max_records: int = 200_000,
        max_bytes: int = 64 * 1024 * 1024,
        training_samples_max: int = 1000,
        readonly: bool = False,
        synchronous: Literal["full", "normal"] = "full",
    ) -> None:
        self.path = Path(path)
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.training_samples_max = training_samples_max
        try:
            if readonly:
                uri = f"file:{self.path}?mode=ro"
                self._db = sqlite3.connect(
                    uri, uri=True, isolation_level=None, check_same_thread=False
                )
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                self._db.execute("PRAGMA journal_mode=WAL")
                # FULL: the WAL is fsynced at every commit, so a power cut keeps committed rows.
                # NORMAL (simulation only) still survives a crash of the process.
                mode = {"full": "FULL", "normal": "NORMAL"}[synchronous]
                self._db.execute(f"PRAGMA synchronous={mode}")
                self._db.executescript(_SCHEMA)
            self._db.execute("PRAGMA busy_timeout=5000")
            # The working set is the newest and the oldest pages (append, replay, delete): a
            # bounded page cache keeps a device offline for days at CACHE_KIB, not SQLite's 2 MiB.
            self._db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            depth, size = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM records"
            ).fetchone()
        except sqlite3.Error as exc:
            raise OutboxError(f"cannot open the outbox {self.path}: {exc}") from None
        self._depth = int(depth)
        self._bytes = int(size)
        self._drops = self._meta("drops")

    def _meta(self, key: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    @property
    def depth(self) -> int:
        """Records waiting for a commit."""
        return self._depth

    @property
    def drops(self) -> int:
        """Records dropped (oldest first) because the outbox was full, since it was created."""
        return self._drops

    @property
    def size_bytes(self) -> int:
        """Payload bytes of the records waiting for a commit (bounded by ``max_bytes``)."""
        return self._bytes

    @property
    def fill(self) -> float:
        """How full the outbox is: the larger of its record and byte fractions (0 to 1)."""
        return max(self._depth / self.max_records, self._bytes / self.max_bytes)

    def register_boot(self, boot_id: str, started_at: float | None = None) -> None:
        """Note a new boot so its seq high-water mark is kept even after its rows are gone."""
        with self._tx():
            self._db.execute(
                "INSERT OR IGNORE INTO boots (boot_id, started_at, last_seq) VALUES (?, ?, 0)",
                (boot_id, time.time() if started_at is None else started_at),
            )

    def append(self, rows: Sequence[Row], dropped_before: int = 0) -> int:
        """Store ``rows`` in one durable transaction; return how many old rows were dropped.

        ``dropped_before`` counts records the caller dropped before they got here (the
        uplink's memory bound while writes failed); they join the persisted drop counter in
        the same transaction.
        """
        if not rows and not dropped_before:
            return 0
        added = sum(len(r.payload) for r in rows)
        last: dict[str, int] = {}
        for r in rows:
            last[r.boot_id] = max(r.seq, last.get(r.boot_id, 0))
        with self._tx():
            self._db.executemany(
                "INSERT OR IGNORE INTO records "
                "(boot_id, seq, stream, topic, grp, single, payload, size) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(*r, len(r.payload)) for r in rows],
            )
            self._db.executemany(
                "INSERT INTO boots (boot_id, started_at, last_seq) VALUES (?, ?, ?) "
                "ON CONFLICT (boot_id) DO UPDATE SET last_seq = MAX(last_seq, excluded.last_seq)",
                [(b, time.time(), s) for b, s in last.items()],
            )
            depth, size = self._depth + len(rows), self._bytes + added
            dropped = 0
            if dropped_before:
                self._db.execute(
                    "INSERT INTO meta (key, value) VALUES ('drops', ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = value + excluded.value",
                    (dropped_before,),
                )
            if depth > self.max_records or size > self.max_bytes:
                dropped, freed, upto = 0, 0, -1
                for rid, rsize in self._db.execute("SELECT id, size FROM records ORDER BY id"):
                    if depth - dropped <= self.max_records and size - freed <= self.max_bytes:
                        break
                    dropped += 1
                    freed += rsize
                    upto = rid
                self._db.execute("DELETE FROM records WHERE id <= ?", (upto,))
                size -= freed
                self._db.execute(
                    "INSERT INTO meta (key, value) VALUES ('drops', ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = value + excluded.value",
                    (dropped,),
                )
        self._depth, self._bytes = depth - dropped, size
        self._drops += dropped + dropped_before
        return dropped

    def read_after(self, after_id: int, limit: int) -> list[StoredRow]:
        """Up to ``limit`` rows with id greater than ``after_id``, oldest first."""
        cur = self._db.execute(
            "SELECT id, boot_id, seq, stream, topic, grp, single, payload FROM records "
            "WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, limit),
        )
        return [StoredRow(i, b, s, st, tp, g, bool(one), p) for i, b, s, st, tp, g, one, p in cur]

    def oldest_id(self) -> int | None:
        """Id of the oldest stored row, or None when the outbox is empty."""
        row = self._db.execute("SELECT MIN(id) FROM records").fetchone()
        return None if row[0] is None else int(row[0])

    def commit(self, ranges: Iterable[CommitRange]) -> int:
        """Delete the records the cloud committed; return how many rows went."""
        deleted = freed = 0
        with self._tx():
            for r in ranges:
                for (size,) in self._db.execute(
                    "DELETE FROM records WHERE boot_id = ? AND seq BETWEEN ? AND ? RETURNING size",
                    (r.boot_id, r.first, r.last),
                ).fetchall():
                    deleted += 1
                    freed += size
        self._depth -= deleted
        self._bytes -= freed
        return deleted

    def add_training_sample(self, t: float, model: str, x: bytes, y: bytes | None) -> None:
        """Keep one input (and label if known) for federated training; oldest go past the cap."""
        if self.training_samples_max <= 0:
            return
        with self._tx():
            self._db.execute(
                "INSERT INTO training_samples (t, model, x, y) VALUES (?, ?, ?, ?)",
                (t, model, x, y),
            )
            self._db.execute(
                "DELETE FROM training_samples WHERE id <= "
                "(SELECT MAX(id) FROM training_samples) - ?",
                (self.training_samples_max,),
            )

    def training_sample_count(self, model: str) -> int:
        """How many samples of ``model`` the training buffer holds."""
        row = self._db.execute(
            "SELECT COUNT(*) FROM training_samples WHERE model = ?", (model,)
        ).fetchone()
        return int(row[0])

    def training_samples(self, limit: int = 1000) -> list[tuple[float, str, bytes, bytes | None]]:
        """The newest buffered training samples, oldest first."""
        rows = self._db.execute(
            "SELECT t, model, x, y FROM training_samples ORDER BY id DESC LIMIT ?", (limit,)
        ).fetchall()
        return [
            (float(t), str(m), bytes(x), None if y is None else bytes(y))
            for t, m, x, y in reversed(rows)
        ]

    def stats(self) -> OutboxStats:
        """Depth, bytes, drops, per-boot seq marks and the training buffer size, read fresh."""
        depth, size = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM records"
        ).fetchone()
        boots = dict(self._db.execute("SELECT boot_id, last_seq FROM boots ORDER BY started_at"))
        (samples,) = self._db.execute("SELECT COUNT(*) FROM training_samples").fetchone()
        return OutboxStats(int(depth), int(size), self._meta("drops"), boots, int(samples))

    def close(self) -> None:
        """Close the database (a checkpoint folds the WAL back into the file)."""
        self._db.close()

    def _tx(self) -> _Transaction:
        return _Transaction(self._db, self.path)


class _Transaction:
    """``BEGIN IMMEDIATE`` .. ``COMMIT``, translating SQLite errors into OutboxError."""

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self._db = db
        self._path = path

    def __enter__(self) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise OutboxError(f"outbox {self._path}: {exc}") from None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        if exc_type is None:
            try:
                self._db.execute("COMMIT")
                return
            except sqlite3.Error as err:
                exc = err
        self._db.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error):
            raise OutboxError(f"outbox {self._path}: {exc}") from None
