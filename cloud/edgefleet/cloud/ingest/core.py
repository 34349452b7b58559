"""The work behind the network thread: raw messages in, committed batches and counters out."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from edgefleet.cloud.errors import StoreError
from edgefleet.cloud.ingest.base import Chunk, DeviceCommit, Outcome, Raw
from edgefleet.cloud.ingest.batch import BatchBuilder
from edgefleet.cloud.ingest.settings import IngestSettings
from edgefleet.cloud.ingest.throttle import Throttle
from edgefleet.cloud.store.base import QuarantineEntry, TelemetryStore, WriteResult
from edgefleet.protocol import codec, topics
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

    # -- messages ---------------------------------------------------------------------------
    def feed(self, chunk: Chunk) -> None:
        """Check and batch every message of ``chunk``."""
        now = chunk.received_at
        for raw_topic, payload in chunk.messages:
            self._one(raw_topic, payload, now)

    def _one(self, raw_topic: bytes, payload: Raw, now: float) -> None:
        try:
            name = raw_topic.decode()
        except UnicodeDecodeError:
            detail = "topic is not UTF-8"
            self._quarantine(now, "bad-topic", repr(raw_topic), None, why=detail, data=payload)
            return
        try:
            topic = topics.parse(name)
        except TopicError as exc:
            self._quarantine(now, exc.reason, name, None, why=str(exc), data=payload)
            return
        if not self.throttle.allow(topic.device, now):
            self._counts.throttled += 1
            self._dirty = True
            if self.throttle.should_report(topic.device, now):
                dropped = self.throttle.dropped(topic.device)
                detail = f"over {self.throttle.rate:g} msg/s; {dropped} dropped so far"
                self._quarantine(now, "throttled", name, topic.device, why=detail, data=payload)
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
        self._builder.add(topic, message, now)
        self._counts.valid += 1

    def _quarantine(
        self, now: float, reason: str, topic: str, device: str | None, *, why: str, data: Raw
    ) -> None:
        q = self._counts.quarantined
        q[reason] = q.get(reason, 0) + 1
        self._builder.quarantine(
            QuarantineEntry(
                received_at=now,
                reason=reason,
                topic=topic[:512],
                device_id=device,
                detail=why[:1024],
                payload_size=len(data),
                payload_excerpt=bytes(data[:EXCERPT_BYTES]),
            )
        )

    # -- batches ----------------------------------------------------------------------------
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
        is not acked, so the devices keep and resend its records.
        """
        b, out = self._builder, self._counts
        if b.empty and not self._dirty:
            return None
        self._builder, self._counts, self._dirty = BatchBuilder(), Outcome(), False
        if b.empty:
            return out
        # Workers sharing a subscription update the same device rows; one order for all keeps
        # PostgreSQL from deadlocking two of their transactions.
        b.batch.devices = dict(sorted(b.batch.devices.items()))
        t0 = time.perf_counter()
        result = self._write(b, out)
        if result is None:
            return out
        out.batch_seconds = time.perf_counter() - t0
        out.batch_started = b.started
        out.newest_sent_at = b.newest_sent_at
        out.records = b.batch.record_count
        out.inserted = result.inserted
        out.duplicates = result.duplicates
        out.commits = [
            DeviceCommit(
                fleet, device, [r for boot, seqs in boots.items() for r in ranges_of(boot, seqs)]
            )
            for device, (fleet, boots) in b.commits.items()
        ]
        return out

    def _write(self, b: BatchBuilder, out: Outcome) -> WriteResult | None:
        while True:
            try:
                return self.store.write_batch(b.batch)
            except StoreError as exc:
                out.store_errors += 1
                log.error("ingest: store write failed, retrying: %s", exc)
                if self._stopping():
                    return None
                time.sleep(0.5)
