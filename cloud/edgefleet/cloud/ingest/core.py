"""The work behind the network thread: raw messages in, committed batches and counters out."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from edgefleet.cloud.errors import StoreError, StoreRefused
from edgefleet.cloud.ingest.base import Chunk, DeviceCommit, Outcome, Raw
from edgefleet.cloud.ingest.batch import BatchBuilder, Unit
from edgefleet.cloud.ingest.settings import IngestSettings
from edgefleet.cloud.ingest.throttle import Throttle
from edgefleet.cloud.store.base import IngestBatch, QuarantineEntry, TelemetryStore, WriteResult
from edgefleet.cloud.trust import RecordKeys
from edgefleet.protocol import codec, topics
from edgefleet.protocol.commandauth import record_mac_ok
from edgefleet.protocol.errors import EdgefleetError, TopicError
from edgefleet.protocol.messages import ranges_of
from edgefleet.protocol.topics import Kind

log = logging.getLogger(__name__)
EXCERPT_BYTES = 256


class IngestCore:
    """Topic check, throttle, decode and validation, batching, and the store transaction.

    Single-threaded: whoever owns it (a stage thread or a stage process) calls :meth:`feed`
    with what arrived and :meth:`flush` when :meth:`due_in` says the batch is due.
    """

    def __init__(
        self,
        settings: IngestSettings,
        store: TelemetryStore,
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        self.settings = settings
        self.store = store
        self.throttle = Throttle(settings.throttle_rate, settings.throttle_burst)
        self._stopping = stopping
        self._builder = BatchBuilder()
        self._counts = Outcome()
        self._dirty = False
        self.keys = RecordKeys(store)

    # -- messages ---------------------------------------------------------------------------
    def feed(self, chunk: Chunk) -> None:
        """Check and batch every message of ``chunk``."""
        now = chunk.received_at
        for raw_topic, payload in chunk.messages:
            try:
                self._one(raw_topic, payload, now)
            except Exception as exc:  # a check that crashes must not stop the others
                log.exception("ingest: checking a message failed")
                topic = raw_topic.decode(errors="replace")
                self._quarantine(now, "ingest-error", topic, None, why=repr(exc), data=payload)

    def _one(self, raw_topic: bytes, payload: Raw, now: float) -> None:
        try:
            name = raw_topic.decode()
        except UnicodeDecodeError:
            name = raw_topic.decode(errors="replace")
            if not self._over_limit(_topic_key(name), name, None, now, payload):
                detail = "topic is not UTF-8"
                self._quarantine(now, "bad-topic", repr(raw_topic), None, why=detail, data=payload)
            return
        try:
            topic = topics.parse(name)
        except TopicError as exc:
            # No device to blame: the topic's leading levels stand in for the publisher.
            if not self._over_limit(_topic_key(name), name, None, now, payload):
                self._quarantine(now, exc.reason, name, None, why=str(exc), data=payload)
            return
        if self._over_limit(topic.device, name, topic.device, now, payload):
            return
        try:
            message = codec.decode(payload)
            if topic.kind is not Kind.CMD and message.device_id != topic.device:
                raise TopicError(
                    f"device {message.device_id!r} published on the topic of {topic.device!r}",
                    reason="impostor",
                )
            codec.check_topic(topic, message)
        except EdgefleetError as exc:
            self._quarantine(now, exc.reason, name, topic.device, why=str(exc), data=payload)
            return
        why = self._unauthentic(name, topic.device, payload, message)
        if why is not None:
            self._quarantine(now, why[0], name, topic.device, why=why[1], data=payload)
            return
        self._builder.add(topic, message, now, payload)
        self._counts.valid += 1

    def _unauthentic(
        self, name: str, device: str, payload: Raw, message: Any
    ) -> tuple[str, str] | None:
        """(reason, detail) when a device message's record MAC does not vouch for it.

        Checked before anything is stored: a forger who takes a device's next seqs is
        quarantined (``impostor``), and the genuine records are stored when they come.
        """
        key = self.keys.get(device)
        if key is None:
            if self.settings.record_macs == "required":
                return "unauthenticated", f"device {device!r} has no registered record key"
            return None
        if record_mac_ok(key, name, bytes(payload), message):
            return None
        if message.auth is None:
            return "impostor", f"no record MAC, but device {device!r} has a record key"
        return "impostor", f"the record MAC does not match device {device!r}'s key"

    def _over_limit(
        self, key: str, name: str, device: str | None, now: float, payload: Raw
    ) -> bool:
        """Take a token of ``key``'s bucket; when it is empty count the drop and say so."""
        if self.throttle.allow(key, now):
            return False
        self._counts.throttled += 1
        self._dirty = True
        if self.throttle.should_report(key, now):
            dropped = self.throttle.dropped(key)
            detail = f"over {self.throttle.rate:g} msg/s; {dropped} dropped so far"
            self._quarantine(now, "throttled", name, device, why=detail, data=payload)
        return True

    def _quarantine(
        self, now: float, reason: str, topic: str, device: str | None, *, why: str, data: Raw
    ) -> None:
        q = self._counts.quarantined
        topic, why = topic[:512], why[:1024]
        cap = self.throttle.quarantine
        if not cap.admit(now, len(topic) + len(why) + min(len(data), EXCERPT_BYTES)):
            # Over the global cap: counted (reason "over-cap"), one summary row a second.
            q["over-cap"] = q.get("over-cap", 0) + 1
            self._dirty = True
            if not cap.should_report(now):
                return
            reason, device, data = "quarantine-capped", None, b""
            why = f"quarantine over {cap.rate:g} rows/s; {cap.dropped} rows not written so far"
        q[reason] = q.get(reason, 0) + 1
        self._builder.quarantine(
            QuarantineEntry(
                received_at=now,
                reason=reason,
                # PostgreSQL refuses NUL in text; a quarantine row must always be storable.
                topic=topic.replace("\x00", "\\x00"),
                device_id=device,
                detail=why.replace("\x00", "\\x00"),
                payload_size=len(data),
                payload_excerpt=bytes(data[:EXCERPT_BYTES]),
            )
        )

    # -- batches ----------------------------------------------------------------------------
    def discard(self) -> None:
        """Forget the pending batch (never acked: its devices resend it); keep the counters."""
        self._builder = BatchBuilder()
        self._dirty = True

    @property
    def full(self) -> bool:
        """True when the pending batch reached ``batch_max_records``."""
        return self._builder.size >= self.settings.batch_max_records

    def due_in(self, now: float) -> float | None:
        """Seconds until :meth:`flush` is due; None while nothing is pending."""
        if self.full:
            return 0.0
        if self._builder.empty:
            return 0.0 if self._dirty else None
        return max(0.0, self._builder.started + self.settings.batch_max_delay_s - now)

    def flush(self) -> Outcome | None:
        """Write the pending batch in one transaction; its outcome, or None if nothing changed.

        A store that fails is retried until it works or the owner stops; a batch given up on
        is not acked, so the devices keep and resend its records. A batch the store refuses
        (a value it cannot hold) is split until the message at fault is found: that one is
        quarantined (``store-refused``), the others are written and acked.
        """
        b, out = self._builder, self._counts
        if b.empty and not self._dirty:
            return None
        self._builder, self._counts, self._dirty = BatchBuilder(), Outcome(), False
        if b.empty:
            return out
        t0 = time.perf_counter()
        written = self._write_isolating(b, out)
        if not written:
            return out
        out.batch_seconds = time.perf_counter() - t0
        out.batch_started = b.started
        out.newest_sent_at = b.newest_sent_at
        commits: dict[str, tuple[str, dict[str, list[int]]]] = {}
        for part, result in written:
            out.records += part.batch.record_count
            for table, n in result.inserted.items():
                out.inserted[table] = out.inserted.get(table, 0) + n
            out.duplicates += result.duplicates
            for device, (fleet, boots) in part.commits.items():
                into = commits.setdefault(device, (fleet, {}))[1]
                for boot, seqs in boots.items():
                    into.setdefault(boot, []).extend(seqs)
        out.commits = [
            DeviceCommit(
                fleet,
                device,
                [r for boot, seqs in boots.items() for r in ranges_of(boot, seqs)],
                self.keys.get(device),
            )
            for device, (fleet, boots) in commits.items()
        ]
        return out

    def _write_isolating(
        self, b: BatchBuilder, out: Outcome
    ) -> list[tuple[BatchBuilder, WriteResult]]:
        """Write ``b``, halving refused parts down to single units; what was committed."""
        written: list[tuple[BatchBuilder, WriteResult]] = []
        pending = [b]
        while pending:
            part = pending.pop(0)
            # Workers sharing a subscription update the same device rows; one order for all
            # keeps PostgreSQL from deadlocking two of their transactions.
            part.batch.devices = dict(sorted(part.batch.devices.items()))
            try:
                written.append((part, self._write(part.batch, out)))
            except _GaveUp:
                break
            except Exception as exc:  # StoreRefused, or a failure nobody foresaw: same cure
                if not isinstance(exc, StoreRefused):
                    log.exception("ingest: the store failed on a batch; isolating its messages")
                if len(part.units) > 1:
                    pending[:0] = part.split()
                    continue
                self._refused(part.units[0], exc, out, pending)
        return written

    def _refused(
        self, unit: Unit, exc: Exception, out: Outcome, pending: list[BatchBuilder]
    ) -> None:
        """Quarantine the one message the store refused (never acked: the device keeps it)."""
        out.store_errors += 1
        if isinstance(unit, QuarantineEntry):
            log.error("ingest: the store refused a quarantine row (%s): dropped: %s", unit, exc)
            return
        topic, _message, now, payload = unit
        log.warning("ingest: the store refused a message on %s: %s", topic, exc)
        out.valid -= 1
        q = out.quarantined
        q["store-refused"] = q.get("store-refused", 0) + 1
        entry = QuarantineEntry(
            received_at=now,
            reason="store-refused",
            topic=str(topic)[:512],
            device_id=topic.device,
            detail=f"{type(exc).__name__}: {exc}"[:1024].replace("\x00", "\\x00"),
            payload_size=len(payload),
            payload_excerpt=bytes(payload[:EXCERPT_BYTES]),
        )
        row = BatchBuilder()
        row.quarantine(entry)
        pending.insert(0, row)

    def _write(self, batch: IngestBatch, out: Outcome) -> WriteResult:
        """Write one batch, retrying while the store itself fails; raise what the data causes."""
        while True:
            try:
                return self.store.write_batch(batch)
            except StoreRefused:
                raise
            except StoreError as exc:
                out.store_errors += 1
                log.error("ingest: store write failed, retrying: %s", exc)
                if self._stopping():
                    raise _GaveUp from exc
                time.sleep(0.5)


class _GaveUp(Exception):
    """The owner stops while the store still fails: the rest of the batch is not acked."""


def _topic_key(name: str) -> str:
    """The throttle bucket of a message whose topic names no valid device: its fleet level.

    A publisher can vary every level after the fleet's at will; one bucket per fleet keeps
    such a flood to ``throttle_burst`` quarantine rows, then to ``throttle_rate`` a second.
    """
    return "topic:" + "/".join(name.split("/", 3)[:3])[:256]
