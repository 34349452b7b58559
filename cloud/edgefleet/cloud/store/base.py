"""The ``TelemetryStore`` seam: what ingest, the registry and the HTTP API need from a database."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from edgefleet.protocol.messages import DeviceProfile

# Record tables and their columns. Every record table starts with the record identity
# (device_id, boot_id, seq) that the unique constraint dedupes on, then received_at (cloud
# clock) and t (device clock; order within a boot by seq, never by t).
KEY_COLUMNS = ("device_id", "boot_id", "seq", "received_at", "t")
RECORD_COLUMNS: dict[str, tuple[str, ...]] = {
    "health": (
        *KEY_COLUMNS,
        "uptime_s",
        "agent_version",
        "model",
        "model_version",
        "cpu_percent",
        "mem_rss_mb",
        "mem_available_mb",
        "temperature_c",
        "throttled",
        "inferences",
        "latency_ms_p50",
        "latency_ms_p95",
        "latency_ms_p99",
        "outbox_depth",
        "outbox_drops",
    ),
    "inference": (
        *KEY_COLUMNS,
        "model",
        "model_version",
        "outputs",
        "label",
        "score",
        "latency_ms",
    ),
    "readings": (*KEY_COLUMNS, "stream", "channels", "samples"),
    "drift": (
        *KEY_COLUMNS,
        "model",
        "model_version",
        "window_start",
        "window_end",
        "features",
    ),
    "events": (*KEY_COLUMNS, "kind", "level", "message", "data"),
    "command_acks": (
        *KEY_COLUMNS,
        "command_id",
        "command",
        "status",
        "reason",
        "detail",
        "data",
    ),
}
# Columns stored as JSON text (decoded again on the way out).
JSON_COLUMNS = frozenset({"outputs", "channels", "samples", "features", "data"})
# Raw telemetry that retention may delete; events and command acks are kept as an audit trail.
RAW_TABLES = ("health", "inference", "readings", "drift")
RecordTable = Literal["health", "inference", "readings", "drift", "events", "command_acks"]
TargetState = Literal["pending", "sent", "received", "succeeded", "failed", "refused"]
TERMINAL_STATES: frozenset[str] = frozenset({"succeeded", "failed", "refused"})
SelectorKind = Literal["device", "list", "tag", "all"]


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """What a retained birth or will says about a device."""

    online: bool
    reason: str | None
    boot_id: str
    agent_version: str
    model: str | None
    model_version: str | None
    # The sender's clock: orders statuses of different boots (see :func:`supersedes`).
    sent_at: float = 0.0
    # What the device offers a model (``Status.profile``); None from agents before it.
    profile: DeviceProfile | None = None


def supersedes(new: StatusUpdate, old: StatusUpdate) -> bool:
    """True when status ``new`` replaces ``old``, whatever order they arrived in.

    Within one boot, arrival order wins: an agent builds its will before its birth, so a
    real LWT carries an older ``sent_at`` than the birth it ends. Across boots a status
    older than the stored one is ignored (a late LWT of a previous boot must not mark a
    live device offline), except an "online" over an "offline": a device without a
    real-time clock may boot with its clock behind the last boot's.
    """
    if new.boot_id == old.boot_id or (new.online and not old.online):
        return True
    return new.sent_at >= old.sent_at


@dataclass(slots=True)
class DeviceUpdate:
    """Everything one ingest batch learnt about one device (merged, newest wins)."""

    device_id: str
    fleet: str
    last_seen: float
    status: StatusUpdate | None = None
    # Latest health columns (names of RECORD_COLUMNS["health"] after the key) and its time.
    health: dict[str, Any] | None = None
    health_t: float = 0.0


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    """A message ingest refused, with the reason code of the check that failed."""

    received_at: float
    reason: str
    topic: str
    device_id: str | None
    detail: str
    payload_size: int
    payload_excerpt: bytes
    id: int | None = None


@dataclass(frozen=True, slots=True)
class AckUpdate:
    """A device's command ack that moves the state of an assignment target."""

    command_id: str
    device_id: str
    status: TargetState
    reason: str | None
    detail: str | None
    at: float


@dataclass(slots=True)
class IngestBatch:
    """One transaction's worth of ingest: records per table, device state, quarantine, acks."""

    records: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)
    devices: dict[str, DeviceUpdate] = field(default_factory=dict)
    quarantine: list[QuarantineEntry] = field(default_factory=list)
    acks: list[AckUpdate] = field(default_factory=list)

    @property
    def record_count(self) -> int:
        """Number of records (rows) in the batch, duplicates included."""
        return sum(len(rows) for rows in self.records.values())

    def __len__(self) -> int:
        return self.record_count + len(self.devices) + len(self.quarantine)


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What a committed batch changed: new rows per table; the rest were duplicates."""

    inserted: dict[str, int]
    duplicates: int

    @property
    def inserted_total(self) -> int:
        """New rows over all tables."""
        return sum(self.inserted.values())


@dataclass(frozen=True, slots=True)
class DeviceState:
    """Fleet state of one device as the cloud knows it."""

    device_id: str
    fleet: str
    online: bool
    status_reason: str | None
    first_seen: float
    last_seen: float
    boot_id: str | None
    agent_version: str
    model: str | None
    model_version: str | None
    tags: tuple[str, ...]
    health_at: float | None
    uptime_s: float | None
    cpu_percent: float | None
    mem_rss_mb: float | None
    mem_available_mb: float | None
    temperature_c: float | None
    throttled: int | None
    inferences: int | None
    latency_ms_p50: float | None
    latency_ms_p95: float | None
    latency_ms_p99: float | None
    outbox_depth: int | None
    outbox_drops: int | None
    # Sender clock of the status the row holds (migration 2; None before the first status).
    status_at: float | None = None
    # The birth's device profile (migration 3): channels, sample_rate_hz, runtimes, task,
    # labels, and ``model``, the name@version its task and labels describe. None from agents
    # that do not report one.
    profile: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """One registered model version: the archive's address and what its manifest says."""

    name: str
    version: str
    sha256: str
    size: int
    runtime: str
    key_id: str
    description: str
    metrics: dict[str, float]
    lineage: dict[str, Any]
    manifest: dict[str, Any]
    created_at: float
    uploaded_at: float

    @property
    def ref(self) -> str:
        """``name@version``."""
        return f"{self.name}@{self.version}"


@dataclass(frozen=True, slots=True)
class AssignmentTarget:
    """The state of one device within an assignment (a rollout wave builds on these)."""

    device_id: str
    state: TargetState
    reason: str | None
    detail: str | None
    updated_at: float


@dataclass(frozen=True, slots=True)
class Assignment:
    """``name@version`` sent to a set of devices, with each target's progress."""

    id: str
    fleet: str
    model: str
    version: str
    sha256: str
    size: int
    url: str
    selector_kind: SelectorKind
    selector: tuple[str, ...]
    created_at: float
    rollout_id: str | None = None
    wave: int = 0
    targets: tuple[AssignmentTarget, ...] = ()

    def counts(self) -> dict[str, int]:
        """Number of targets in each state."""
        out: dict[str, int] = {}
        for t in self.targets:
            out[t.state] = out.get(t.state, 0) + 1
        return out


class TelemetryStore(Protocol):
    """Idempotent storage of records, fleet state, quarantine, models and assignments.

    Implementations are thread-safe (one connection behind a lock); open one per process role
    when throughput matters. Every method either completes or raises :class:`StoreError`.
    """

    url: str

    def migrate(self) -> int:
        """Apply pending migrations; return the schema version now in place."""
        ...

    def schema_version(self) -> int:
        """The schema version the database holds (0 when empty)."""
        ...

    def write_batch(self, batch: IngestBatch) -> WriteResult:
        """Write a whole batch in ONE transaction; duplicates are skipped, never an error."""
        ...

    def devices(
        self, *, fleet: str | None = None, tag: str | None = None, online: bool | None = None
    ) -> list[DeviceState]:
        """Devices, optionally of one fleet, with one tag, or only on/offline ones."""
        ...

    def device(self, device_id: str) -> DeviceState:
        """One device, or :class:`NotFound`."""
        ...

    def set_tags(self, device_id: str, tags: Sequence[str]) -> DeviceState:
        """Replace the tags of a known device."""
        ...

    def forget_device(self, device_id: str, *, purge: bool = False) -> dict[str, int]:
        """Delete a known device's row; ``purge`` also its records; rows deleted per table."""
        ...

    def records(
        self,
        table: RecordTable,
        *,
        device_id: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        """Records of one table with ``since <= t < until``, newest first."""
        ...

    def record_keys(self, table: RecordTable, device_id: str) -> list[tuple[str, int]]:
        """``(boot_id, seq)`` of every stored record of a device in a table, in order."""
        ...

    def count(self, table: str) -> int:
        """Number of rows of a table."""
        ...

    def quarantined(
        self,
        *,
        device_id: str | None = None,
        reason: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 1000,
    ) -> list[QuarantineEntry]:
        """Quarantined messages, newest first."""
        ...

    def put_model(self, model: ModelVersion) -> ModelVersion:
        """Register a version; the same bytes again is a no-op, other bytes a Conflict."""
        ...

    def models(self, name: str | None = None) -> list[ModelVersion]:
        """Registered versions, of one model or all, newest upload first."""
        ...

    def model(self, name: str, version: str) -> ModelVersion:
        """One version, or :class:`NotFound`."""
        ...

    def delete_model(self, name: str, version: str) -> ModelVersion:
        """Unregister a version unless a device serves it or an assignment of it is in flight."""
        ...

    def create_assignment(self, assignment: Assignment) -> Assignment:
        """Store an assignment with its targets (all ``pending``)."""
        ...

    def assignments(self, *, limit: int = 100) -> list[Assignment]:
        """Assignments, newest first, with their targets."""
        ...

    def assignment(self, assignment_id: str) -> Assignment:
        """One assignment with its targets, or :class:`NotFound`."""
        ...

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
        """Move a target to ``state`` unless it already reached a terminal one."""
        ...

    def prune(self, before: float, tables: Sequence[str] = RAW_TABLES) -> dict[str, int]:
        """Delete records received before ``before`` (retention); return rows deleted."""
        ...

    def close(self) -> None:
        """Close the connection."""
        ...
