"""The SQL both backends share; a backend supplies the connection and the dialect."""
# ruff: noqa: S608 - table and column names come from fixed tuples in base.py, never from input

from __future__ import annotations

import json
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any

import msgspec

from edgefleet.cloud.errors import Conflict, NotFound, SchemaTooNew
from edgefleet.cloud.store.base import (
    JSON_COLUMNS,
    RAW_TABLES,
    RECORD_COLUMNS,
    TERMINAL_STATES,
    Assignment,
    AssignmentTarget,
    DeviceState,
    IngestBatch,
    ModelVersion,
    QuarantineEntry,
    RecordTable,
    StatusUpdate,
    TargetState,
    WriteResult,
)
from edgefleet.cloud.store.migrations import LATEST, MIGRATIONS, Dialect

_HEALTH_FIELDS = RECORD_COLUMNS["health"][5:]
_DEVICE_HEALTH = tuple(c for c in _HEALTH_FIELDS if c not in ("agent_version", "model_version"))
_TERMINAL_SQL = ", ".join(f"'{s}'" for s in sorted(TERMINAL_STATES))


class Cursor:
    """The few cursor operations the shared SQL needs, in the backend's placeholder style."""

    def __init__(self, raw: Any, dialect: Dialect) -> None:
        self.raw = raw
        self._ph = dialect.placeholder

    def _sql(self, sql: str) -> str:
        return sql if self._ph == "?" else sql.replace("?", self._ph)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; return the number of rows it changed."""
        cur = self.raw.execute(self._sql(sql), tuple(params))
        return int(cur.rowcount)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        """Run one statement per row; return the number of rows changed in total."""
        if not rows:
            return 0
        # sqlite3's connection returns a cursor; a psycopg cursor returns None and counts itself.
        cur = self.raw.executemany(self._sql(sql), rows) or self.raw
        return int(cur.rowcount)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Run a query; rows as dicts."""
        cur = self.raw.execute(self._sql(sql), tuple(params))
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


class SqlStore(ABC):
    """A :class:`~edgefleet.cloud.store.base.TelemetryStore` over one DB-API connection."""

    dialect: Dialect
    url: str

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._insert_sql = {
            table: (
                f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
                "ON CONFLICT (device_id, boot_id, seq) DO NOTHING"
            )
            for table, cols in RECORD_COLUMNS.items()
        }

    # -- backend hooks -------------------------------------------------------------------
    @abstractmethod
    def _transaction(self) -> AbstractContextManager[Cursor]:
        """A cursor inside BEGIN ... COMMIT (ROLLBACK on an exception)."""

    @abstractmethod
    def _reader(self) -> AbstractContextManager[Cursor]:
        """A cursor for reads outside an explicit transaction."""

    @abstractmethod
    def _table_exists(self, cur: Cursor, table: str) -> bool:
        """True if ``table`` exists."""

    @abstractmethod
    def close(self) -> None:
        """Close the connection."""

    # -- schema ----------------------------------------------------------------------------
    def schema_version(self) -> int:
        """The newest migration applied (0 for an empty database)."""
        with self._lock, self._reader() as cur:
            if not self._table_exists(cur, "schema_migrations"):
                return 0
            rows = cur.query("SELECT MAX(version) AS v FROM schema_migrations")
            return int(rows[0]["v"] or 0)

    def migrate(self) -> int:
        """Apply pending migrations, each in its own transaction."""
        with self._lock:
            with self._transaction() as cur:
                cur.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations "
                    f"(version {self.dialect.bigint} PRIMARY KEY, description TEXT NOT NULL, "
                    f"applied_at {self.dialect.real} NOT NULL)".replace(
                        "{bigint}", self.dialect.bigint
                    )
                )
            current = self.schema_version()
            if current > LATEST:
                raise SchemaTooNew(
                    f"{self.url} holds schema version {current}, newer than this edgefleet "
                    f"knows ({LATEST}): upgrade edgefleet before pointing it at this database"
                )
            for version, description, statements in MIGRATIONS:
                if version <= current:
                    continue
                with self._transaction() as cur:
                    for stmt in statements:
                        cur.execute(self.dialect.render(stmt))
                    cur.execute(
                        "INSERT INTO schema_migrations (version, description, applied_at) "
                        "VALUES (?, ?, ?)",
                        (version, description, time.time()),
                    )
            return self.schema_version()

    # -- ingest ----------------------------------------------------------------------------
    def write_batch(self, batch: IngestBatch) -> WriteResult:
        """Write records, device state, acks and quarantine in one transaction."""
        inserted: dict[str, int] = {}
        with self._lock, self._transaction() as cur:
            for table, rows in batch.records.items():
                if rows:
                    inserted[table] = cur.executemany(self._insert_sql[table], rows)
            for dev in batch.devices.values():
                self._update_device(cur, dev)
            for ack in batch.acks:
                self._apply_ack(cur, ack.command_id, ack.device_id, ack.status, ack)
            if batch.quarantine:
                cur.executemany(
                    "INSERT INTO quarantine (received_at, reason, topic, device_id, detail, "
                    "payload_size, payload_excerpt) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            q.received_at,
                            q.reason,
                            q.topic,
                            q.device_id,
                            q.detail,
                            q.payload_size,
                            q.payload_excerpt,
                        )
                        for q in batch.quarantine
                    ],
                )
        duplicates = batch.record_count - sum(inserted.values())
        return WriteResult(inserted, duplicates)

    def _update_device(self, cur: Cursor, dev: Any) -> None:
        cur.execute(
            "INSERT INTO devices (device_id, fleet, first_seen, last_seen) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (device_id) DO UPDATE SET fleet = excluded.fleet, last_seen = "
            "CASE WHEN excluded.last_seen > devices.last_seen THEN excluded.last_seen "
            "ELSE devices.last_seen END",
            (dev.device_id, dev.fleet, dev.last_seen, dev.last_seen),
        )
        st = dev.status
        if st is not None:
            profile = _profile_json(st)
            # The same rule as base.supersedes: workers sharing a subscription may store a
            # late LWT of an old boot after the new boot's birth.
            cur.execute(
                "UPDATE devices SET online = ?, status_reason = ?, boot_id = ?, status_at = ?, "
                "agent_version = CASE WHEN ? <> '' THEN ? ELSE agent_version END, "
                "model = COALESCE(?, model), model_version = COALESCE(?, model_version), "
                # A birth says what the device is now (no profile: an older agent); a will
                # or shutdown without one keeps what the birth said.
                "profile = CASE WHEN ? = 1 THEN ? ELSE COALESCE(?, profile) END "
                "WHERE device_id = ? AND (boot_id IS NULL OR status_at IS NULL OR boot_id = ? "
                "OR (? = 1 AND online = 0) OR status_at <= ?)",
                (
                    int(st.online),
                    st.reason,
                    st.boot_id,
                    st.sent_at,
                    st.agent_version,
                    st.agent_version,
                    st.model,
                    st.model_version,
                    int(st.online),
                    profile,
                    profile,
                    dev.device_id,
                    st.boot_id,
                    int(st.online),
                    st.sent_at,
                ),
            )
        h = dev.health
        if h is not None:
            sets = ", ".join(f"{c} = ?" for c in _DEVICE_HEALTH if c != "model")
            cur.execute(
                f"UPDATE devices SET health_at = ?, {sets}, "
                "agent_version = CASE WHEN ? <> '' THEN ? ELSE agent_version END, "
                "model = COALESCE(?, model), model_version = COALESCE(?, model_version) "
                "WHERE device_id = ? AND (health_at IS NULL OR health_at <= ?)",
                (
                    dev.health_t,
                    *(h.get(c) for c in _DEVICE_HEALTH if c != "model"),
                    h.get("agent_version") or "",
                    h.get("agent_version") or "",
                    h.get("model"),
                    h.get("model_version"),
                    dev.device_id,
                    dev.health_t,
                ),
            )

    def _apply_ack(
        self, cur: Cursor, assignment_id: str, device_id: str, state: str, ack: Any
    ) -> None:
        # A late "received" never overwrites a final answer; a final answer is final.
        cur.execute(
            "UPDATE assignment_targets SET state = ?, reason = ?, detail = ?, updated_at = ? "
            f"WHERE assignment_id = ? AND device_id = ? AND state NOT IN ({_TERMINAL_SQL})",
            (state, ack.reason, ack.detail, ack.at, assignment_id, device_id),
        )

    # -- fleet -----------------------------------------------------------------------------
    def devices(
        self, *, fleet: str | None = None, tag: str | None = None, online: bool | None = None
    ) -> list[DeviceState]:
        """Devices matching the filters, ordered by id."""
        where: list[str] = []
        params: list[Any] = []
        if fleet is not None:
            where.append("fleet = ?")
            params.append(fleet)
        if online is not None:
            where.append("online = ?")
            params.append(int(online))
        sql = "SELECT * FROM devices"
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._lock, self._reader() as cur:
            rows = cur.query(sql + " ORDER BY device_id", params)
        out = [_device(r) for r in rows]
        return [d for d in out if tag is None or tag in d.tags]

    def device(self, device_id: str) -> DeviceState:
        """One device by id."""
        with self._lock, self._reader() as cur:
            rows = cur.query("SELECT * FROM devices WHERE device_id = ?", (device_id,))
        if not rows:
            raise NotFound(f"no device {device_id!r} has been seen by this cloud")
        return _device(rows[0])

    def set_tags(self, device_id: str, tags: Sequence[str]) -> DeviceState:
        """Replace a device's tags."""
        with self._lock, self._transaction() as cur:
            n = cur.execute(
                "UPDATE devices SET tags = ? WHERE device_id = ?",
                (json.dumps(sorted(set(tags))), device_id),
            )
        if n == 0:
            raise NotFound(f"no device {device_id!r} has been seen by this cloud")
        return self.device(device_id)

    def forget_device(self, device_id: str, *, purge: bool = False) -> dict[str, int]:
        """Delete a device's row (state, tags, profile); ``purge`` also deletes its records.

        Without ``purge`` its telemetry, events, command acks and quarantine rows stay, as
        history. Assignment targets always stay: an assignment's record is kept whole.
        """
        out: dict[str, int] = {}
        with self._lock, self._transaction() as cur:
            n = cur.execute("DELETE FROM devices WHERE device_id = ?", (device_id,))
            if n == 0:
                raise NotFound(f"no device {device_id!r} has been seen by this cloud")
            out["devices"] = n
            if purge:
                for table in (*RECORD_COLUMNS, "quarantine"):
                    out[table] = cur.execute(
                        f"DELETE FROM {table} WHERE device_id = ?", (device_id,)
                    )
        return out

    # -- records ---------------------------------------------------------------------------
    def records(
        self,
        table: RecordTable,
        *,
        device_id: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        """Records of one table in a time range (device clock), newest first."""
        if table not in RECORD_COLUMNS:
            raise NotFound(f"no record table {table!r}; choose one of {sorted(RECORD_COLUMNS)}")
        where, params = _range(device_id, since, until, "t")
        sql = f"SELECT * FROM {table}{where} ORDER BY t DESC, seq DESC LIMIT ?"
        with self._lock, self._reader() as cur:
            rows = cur.query(sql, [*params, int(limit)])
        for r in rows:
            for c in JSON_COLUMNS.intersection(r):
                r[c] = json.loads(r[c]) if r[c] is not None else None
        return rows

    def record_keys(self, table: RecordTable, device_id: str) -> list[tuple[str, int]]:
        """(boot_id, seq) of a device's records in a table."""
        with self._lock, self._reader() as cur:
            rows = cur.query(
                f"SELECT boot_id, seq FROM {table} WHERE device_id = ? ORDER BY boot_id, seq",
                (device_id,),
            )
        return [(str(r["boot_id"]), int(r["seq"])) for r in rows]

    def count(self, table: str) -> int:
        """Rows in a table."""
        if table not in {*RECORD_COLUMNS, "devices", "quarantine", "models", "assignments"}:
            raise NotFound(f"no table {table!r}")
        with self._lock, self._reader() as cur:
            return int(cur.query(f"SELECT COUNT(*) AS n FROM {table}")[0]["n"])

    def quarantined(
        self,
        *,
        device_id: str | None = None,
        reason: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 1000,
    ) -> list[QuarantineEntry]:
        """Quarantine rows, newest first."""
        where, params = _range(device_id, since, until, "received_at")
        if reason is not None:
            where += (" AND" if where else " WHERE") + " reason = ?"
            params.append(reason)
        sql = f"SELECT * FROM quarantine{where} ORDER BY id DESC LIMIT ?"
        with self._lock, self._reader() as cur:
            rows = cur.query(sql, [*params, int(limit)])
        return [
            QuarantineEntry(
                received_at=r["received_at"],
                reason=r["reason"],
                topic=r["topic"],
                device_id=r["device_id"],
                detail=r["detail"],
                payload_size=int(r["payload_size"]),
                payload_excerpt=bytes(r["payload_excerpt"]),
                id=int(r["id"]),
            )
            for r in rows
        ]

    def prune(self, before: float, tables: Sequence[str] = RAW_TABLES) -> dict[str, int]:
        """Delete raw records (and quarantine rows) received before ``before``."""
        out: dict[str, int] = {}
        with self._lock, self._transaction() as cur:
            for table in tables:
                if table not in {*RECORD_COLUMNS, "quarantine"}:
                    raise NotFound(f"retention cannot prune table {table!r}")
                out[table] = cur.execute(f"DELETE FROM {table} WHERE received_at < ?", (before,))
        return out

    # -- models ----------------------------------------------------------------------------
    def put_model(self, model: ModelVersion) -> ModelVersion:
        """Register a model version (idempotent for identical bytes)."""
        with self._lock, self._transaction() as cur:
            rows = cur.query(
                "SELECT sha256 FROM models WHERE name = ? AND version = ?",
                (model.name, model.version),
            )
            if rows:
                if rows[0]["sha256"] != model.sha256:
                    raise Conflict(
                        f"{model.ref} is already registered with other bytes "
                        f"(sha256 {rows[0]['sha256'][:12]}...): bump the version"
                    )
            else:
                cur.execute(
                    "INSERT INTO models (name, version, sha256, size, runtime, key_id, "
                    "description, metrics, lineage, manifest, created_at, uploaded_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        model.name,
                        model.version,
                        model.sha256,
                        model.size,
                        model.runtime,
                        model.key_id,
                        model.description,
                        json.dumps(model.metrics),
                        json.dumps(model.lineage),
                        json.dumps(model.manifest),
                        model.created_at,
                        model.uploaded_at,
                    ),
                )
        return self.model(model.name, model.version)

    def models(self, name: str | None = None) -> list[ModelVersion]:
        """Registered versions, newest upload first."""
        where, params = ("", []) if name is None else (" WHERE name = ?", [name])
        with self._lock, self._reader() as cur:
            rows = cur.query(
                f"SELECT * FROM models{where} ORDER BY uploaded_at DESC, version DESC", params
            )
        return [_model(r) for r in rows]

    def model(self, name: str, version: str) -> ModelVersion:
        """One registered version."""
        with self._lock, self._reader() as cur:
            rows = cur.query("SELECT * FROM models WHERE name = ? AND version = ?", (name, version))
        if not rows:
            raise NotFound(f"model {name}@{version} is not in the registry: push it first")
        return _model(rows[0])

    def delete_model(self, name: str, version: str) -> ModelVersion:
        """Unregister a version (returned) unless a device serves it or it is in flight."""
        model = self.model(name, version)
        with self._lock, self._transaction() as cur:
            serving = cur.query(
                "SELECT device_id FROM devices WHERE model = ? AND model_version = ? "
                "ORDER BY device_id",
                (name, version),
            )
            flight = cur.query(
                "SELECT t.device_id, a.id FROM assignment_targets t JOIN assignments a "
                "ON a.id = t.assignment_id WHERE a.model = ? AND a.version = ? "
                f"AND t.state NOT IN ({_TERMINAL_SQL}) ORDER BY t.device_id",
                (name, version),
            )
            if serving or flight:
                why = []
                if serving:
                    why.append(
                        "served by "
                        + ", ".join(str(r["device_id"]) for r in serving[:10])
                        + (f" and {len(serving) - 10} more" if len(serving) > 10 else "")
                    )
                if flight:
                    why.append(
                        "in flight to "
                        + ", ".join(f"{r['device_id']} ({r['id']})" for r in flight[:10])
                        + (f" and {len(flight) - 10} more" if len(flight) > 10 else "")
                    )
                raise Conflict(
                    f"{model.ref} is still in use ({'; '.join(why)}): assign another version "
                    "to those devices and wait for their answers first",
                    reason="model-in-use",
                )
            cur.execute("DELETE FROM models WHERE name = ? AND version = ?", (name, version))
        return model

    # -- assignments -----------------------------------------------------------------------
    def create_assignment(self, assignment: Assignment) -> Assignment:
        """Store an assignment and its pending targets."""
        a = assignment
        with self._lock, self._transaction() as cur:
            cur.execute(
                "INSERT INTO assignments (id, fleet, model, version, sha256, size, url, "
                "selector_kind, selector, created_at, rollout_id, wave) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    a.id,
                    a.fleet,
                    a.model,
                    a.version,
                    a.sha256,
                    a.size,
                    a.url,
                    a.selector_kind,
                    json.dumps(list(a.selector)),
                    a.created_at,
                    a.rollout_id,
                    a.wave,
                ),
            )
            cur.executemany(
                "INSERT INTO assignment_targets (assignment_id, device_id, state, reason, "
                "detail, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                [(a.id, t.device_id, t.state, t.reason, t.detail, t.updated_at) for t in a.targets],
            )
        return self.assignment(a.id)

    def assignments(self, *, limit: int = 100) -> list[Assignment]:
        """Newest assignments first."""
        with self._lock, self._reader() as cur:
            rows = cur.query(
                "SELECT id FROM assignments ORDER BY created_at DESC LIMIT ?", (int(limit),)
            )
        return [self.assignment(str(r["id"])) for r in rows]

    def assignment(self, assignment_id: str) -> Assignment:
        """One assignment with its targets."""
        with self._lock, self._reader() as cur:
            rows = cur.query("SELECT * FROM assignments WHERE id = ?", (assignment_id,))
            targets = cur.query(
                "SELECT * FROM assignment_targets WHERE assignment_id = ? ORDER BY device_id",
                (assignment_id,),
            )
        if not rows:
            raise NotFound(f"no assignment {assignment_id!r}")
        r = rows[0]
        return Assignment(
            id=r["id"],
            fleet=r["fleet"],
            model=r["model"],
            version=r["version"],
            sha256=r["sha256"],
            size=int(r["size"]),
            url=r["url"],
            selector_kind=r["selector_kind"],
            selector=tuple(json.loads(r["selector"])),
            created_at=r["created_at"],
            rollout_id=r["rollout_id"],
            wave=int(r["wave"]),
            targets=tuple(
                AssignmentTarget(
                    device_id=t["device_id"],
                    state=t["state"],
                    reason=t["reason"],
                    detail=t["detail"],
                    updated_at=t["updated_at"],
                )
                for t in targets
            ),
        )

    def set_target_state(
        self,
        assignment_id: str,
        device_id: str,
        state: TargetState,
        *,
        reason: str | None = None,
        detail: str | None = None,
        at: float,
    ) -> None:
        """Move one target forward (never out of a terminal state, "sent" only from pending)."""
        # The device's ack can overtake the cloud's own "sent" mark: never go back to it.
        guard = " AND state = 'pending'" if state == "sent" else ""
        with self._lock, self._transaction() as cur:
            cur.execute(
                "UPDATE assignment_targets SET state = ?, reason = ?, detail = ?, "
                "updated_at = ? WHERE assignment_id = ? AND device_id = ? "
                f"AND state NOT IN ({_TERMINAL_SQL}){guard}",
                (state, reason, detail, at, assignment_id, device_id),
            )


def _range(
    device_id: str | None, since: float | None, until: float | None, column: str
) -> tuple[str, list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    if device_id is not None:
        where.append("device_id = ?")
        params.append(device_id)
    if since is not None:
        where.append(f"{column} >= ?")
        params.append(since)
    if until is not None:
        where.append(f"{column} < ?")
        params.append(until)
    return (" WHERE " + " AND ".join(where) if where else ""), params


def _profile_json(st: StatusUpdate) -> str | None:
    if st.profile is None:
        return None
    data = msgspec.to_builtins(st.profile)
    data["model"] = f"{st.model}@{st.model_version}" if st.model else None
    return json.dumps(data)


def _device(r: dict[str, Any]) -> DeviceState:
    fields = dict(r)
    fields["online"] = bool(fields["online"])
    fields["tags"] = tuple(json.loads(fields["tags"] or "[]"))
    raw = fields.get("profile")
    fields["profile"] = json.loads(raw) if raw else None
    return DeviceState(**fields)


def _model(r: dict[str, Any]) -> ModelVersion:
    return ModelVersion(
        name=r["name"],
        version=r["version"],
        sha256=r["sha256"],
        size=int(r["size"]),
        runtime=r["runtime"],
        key_id=r["key_id"],
        description=r["description"],
        metrics=json.loads(r["metrics"]),
        lineage=json.loads(r["lineage"]),
        manifest=json.loads(r["manifest"]),
        created_at=r["created_at"],
        uploaded_at=r["uploaded_at"],
    )


def iter_chunks(rows: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """Slices of ``rows`` of at most ``size`` items."""
    for i in range(0, len(rows), size):
        yield rows[i : i + size]
