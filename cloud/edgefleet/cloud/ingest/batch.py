"""Turn decoded device messages into one store batch plus the commit-acks it earns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from edgefleet.cloud.ingest.base import Raw
from edgefleet.cloud.store.base import (
    RECORD_COLUMNS,
    AckUpdate,
    DeviceUpdate,
    IngestBatch,
    QuarantineEntry,
    StatusUpdate,
    supersedes,
)
from edgefleet.protocol.messages import (
    CommandAck,
    DriftSketch,
    Envelope,
    Event,
    Health,
    InferenceBatch,
    ReadingBatch,
    Status,
)
from edgefleet.protocol.topics import Topic

# One message as it was added (topic, message, arrival, payload), or one quarantine row: the
# units a refused batch is split into, to find the message the store refuses.
Unit = tuple[Topic, Envelope, float, Raw] | QuarantineEntry

_HEALTH_FIELDS = RECORD_COLUMNS["health"][5:]
_json = msgspec.json.Encoder()


def _dumps(value: Any) -> str:
    return _json.encode(value).decode()


@dataclass(slots=True)
class BatchBuilder:
    """Accumulates one batch; :meth:`take` hands it over with the seqs to commit per device."""

    batch: IngestBatch = field(default_factory=IngestBatch)
    # device -> (fleet, boot -> seqs): every record here is stored once the batch commits.
    commits: dict[str, tuple[str, dict[str, list[int]]]] = field(default_factory=dict)
    messages: int = 0
    started: float = 0.0
    newest_sent_at: float = 0.0
    units: list[Unit] = field(default_factory=list)

    def _rows(self, table: str) -> list[tuple[Any, ...]]:
        rows = self.batch.records.get(table)
        if rows is None:
            rows = self.batch.records[table] = []
        return rows

    def _device(self, topic: Topic, now: float) -> DeviceUpdate:
        dev = self.batch.devices.get(topic.device)
        if dev is None:
            dev = self.batch.devices[topic.device] = DeviceUpdate(topic.device, topic.fleet, now)
        else:
            dev.last_seen = max(dev.last_seen, now)
        return dev

    def _commit(self, topic: Topic, boot_id: str, seqs: list[int]) -> None:
        entry = self.commits.get(topic.device)
        if entry is None:
            entry = self.commits[topic.device] = (topic.fleet, {})
        entry[1].setdefault(boot_id, []).extend(seqs)

    def add(self, topic: Topic, msg: Envelope, now: float, payload: Raw = b"") -> None:
        """Add one valid message (already checked against its topic)."""
        if not self.messages:
            self.started = now
        self.messages += 1
        self.units.append((topic, msg, now, payload))
        self.newest_sent_at = max(self.newest_sent_at, msg.sent_at)
        dev = self._device(topic, now)
        d, b, s = msg.device_id, msg.boot_id, msg.seq
        if isinstance(msg, Status):
            _merge_status(dev, msg)
            return  # a status is not an outbox record: nothing to commit
        if isinstance(msg, InferenceBatch):
            rows = self._rows("inference")
            for r in msg.records:
                rows.append(
                    (
                        d, b, r.seq, now, r.t, msg.model, msg.model_version,
                        _dumps(r.outputs), r.label, r.score, r.latency_ms,
                    )
                )  # fmt: skip
            self._commit(topic, b, [r.seq for r in msg.records])
            return
        if isinstance(msg, ReadingBatch):
            rows = self._rows("readings")
            channels = _dumps(msg.channels)
            for rr in msg.records:
                rows.append((d, b, rr.seq, now, rr.t, topic.name, channels, _dumps(rr.values)))
            self._commit(topic, b, [rr.seq for rr in msg.records])
            return
        if isinstance(msg, Health):
            health = {c: getattr(msg, c) for c in _HEALTH_FIELDS}
            self._rows("health").append((d, b, s, now, msg.sent_at, *health.values()))
            if msg.sent_at >= dev.health_t:
                dev.health, dev.health_t = health, msg.sent_at
        elif isinstance(msg, DriftSketch):
            self._rows("drift").append(
                (
                    d, b, s, now, msg.sent_at, msg.model, msg.model_version,
                    msg.window_start, msg.window_end, _dumps(msg.features),
                )
            )  # fmt: skip
        elif isinstance(msg, Event):
            self._rows("events").append(
                (d, b, s, now, msg.sent_at, msg.kind, msg.level, msg.message, _dumps(msg.data))
            )
        elif isinstance(msg, CommandAck):
            self._rows("command_acks").append(
                (
                    d, b, s, now, msg.sent_at, msg.command_id, msg.command, msg.status,
                    msg.reason, msg.detail, _dumps(msg.data),
                )
            )  # fmt: skip
            self.batch.acks.append(
                AckUpdate(msg.command_id, d, msg.status, msg.reason, msg.detail, now)
            )
        else:  # pragma: no cover - check_topic admits only device message types
            raise TypeError(f"ingest cannot store {type(msg).__name__}")
        self._commit(topic, b, [s])

    def quarantine(self, entry: QuarantineEntry) -> None:
        """Add a refused message."""
        if not self.messages and not self.batch.quarantine:
            self.started = entry.received_at
        self.batch.quarantine.append(entry)
        self.units.append(entry)

    def split(self) -> tuple[BatchBuilder, BatchBuilder]:
        """Two builders holding the first and the second half of this one's units."""
        half = len(self.units) // 2
        return _replay(self.units[:half]), _replay(self.units[half:])

    @property
    def size(self) -> int:
        """Records plus quarantine rows pending."""
        return self.batch.record_count + len(self.batch.quarantine)

    @property
    def empty(self) -> bool:
        """True when nothing is pending."""
        return not self.messages and not self.batch.quarantine


def _replay(units: list[Unit]) -> BatchBuilder:
    b = BatchBuilder()
    for u in units:
        if isinstance(u, QuarantineEntry):
            b.quarantine(u)
        else:
            b.add(*u)
    return b


def _merge_status(dev: DeviceUpdate, msg: Status) -> None:
    status = StatusUpdate(
        online=msg.state == "online",
        reason=msg.reason,
        boot_id=msg.boot_id,
        agent_version=msg.agent_version,
        model=msg.model,
        model_version=msg.model_version,
        sent_at=msg.sent_at,
        profile=msg.profile,
    )
    if dev.status is None or supersedes(status, dev.status):
        dev.status = status
