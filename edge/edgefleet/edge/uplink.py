"""The uplink: owns seqs, the outbox writes, batching, in-order replay, commits and counters.

Results are queued in memory without a seq; a flush (every ``flush_interval_s``) gives them
consecutive seqs and writes them to the outbox in one durable transaction, so every seq of a
boot that exists was stored and a crash never leaves a hole (docs/agent.md). Rows leave the
outbox only when the cloud's Commit covers them. After every (re)connection the whole outbox is
replayed from its oldest row, in order; the cloud dedupes on ``(device_id, boot_id, seq)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

from edgefleet.edge.config import UplinkConfig
from edgefleet.edge.errors import OutboxError
from edgefleet.edge.outbox import Outbox, Row, StoredRow
from edgefleet.edge.pipeline import Result
from edgefleet.edge.sequencer import Sequencer
from edgefleet.edge.transport.base import Transport
from edgefleet.protocol import topics
from edgefleet.protocol.codec import MAX_PAYLOAD_BYTES, Codec
from edgefleet.protocol.commandauth import seal_record
from edgefleet.protocol.messages import (
    Commit,
    CommitRange,
    Envelope,
    InferenceBatch,
    InferenceRecord,
    ReadingBatch,
    ReadingRecord,
)

log = logging.getLogger(__name__)

# Longest wait between two tries at writing the outbox after a write failed (disk full, I/O).
STORE_RETRY_MAX_S = 30.0

_INFERENCE, _READINGS, _SINGLE = 0, 1, 2
MessageFactory = Callable[[str, int], Envelope]
# Told (message, failed flushes in a row) when a flush fails, and ("", 0) when one succeeds again.
StoreErrorSink = Callable[[str, int], None]


# Fractions of the outbox's cap whose upward crossing is logged, and the margin below a level
# the fill must fall to before crossing it again is news (a fill hovering at 50% logs once).
BACKLOG_LEVELS = (0.5, 0.9)
BACKLOG_HYSTERESIS = 0.1
# While the outbox is full and drops every flush, one line per this many seconds.
DROP_LOG_EVERY_S = 60.0


class BacklogMonitor:
    """Logs the outbox filling past 50% and 90% of its cap, draining back, and its drops.

    A line per crossing and per minute of drops, never per record: an agent that lost its
    cloud for a day writes a handful of lines, at the default log level.
    """

    def __init__(
        self,
        device_id: str,
        drops: int,
        *,
        levels: Sequence[float] = BACKLOG_LEVELS,
        drop_every_s: float = DROP_LOG_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.device_id = device_id
        self.levels = tuple(levels)
        self.drop_every_s = drop_every_s
        self._clock = clock
        self._level = 0
        self._drops_seen = drops
        self._last_drop_log: float | None = None

    @property
    def level(self) -> int:
        """How many of the levels the fill is at or past (as last logged)."""
        return self._level

    def observe(self, box: Outbox) -> None:
        """Compare the outbox's fill and drops with what was last logged; log what changed."""
        fill = box.fill
        up = sum(fill >= lv for lv in self.levels)
        if up > self._level:
            self._level = up
            log.warning(
                "%s: outbox at %.0f%% of its cap (%d of %d records, %.1f of %.1f MiB) waiting "
                "for the cloud's commit; past the cap the oldest records are dropped",
                self.device_id,
                fill * 100,
                box.depth,
                box.max_records,
                box.size_bytes / 2**20,
                box.max_bytes / 2**20,
            )
        else:
            down = sum(fill >= lv - BACKLOG_HYSTERESIS for lv in self.levels)
            if down < self._level:
                self._level = down
                if down == 0:
                    log.info(
                        "%s: outbox drained to %.0f%% of its cap (%d records waiting)",
                        self.device_id,
                        fill * 100,
                        box.depth,
                    )
        drops = box.drops
        if drops > self._drops_seen:
            now = self._clock()
            last = self._last_drop_log
            if last is None or now - last >= self.drop_every_s:
                log.warning(
                    "%s: outbox full: dropped the %d oldest records%s (%d since it was "
                    "created); raise outbox.max_records/max_bytes or restore the link to the cloud",
                    self.device_id,
                    drops - self._drops_seen,
                    "" if last is None else f" in the last {now - last:.0f} s",
                    drops,
                )
                self._drops_seen = drops
                self._last_drop_log = now


@dataclass(slots=True)
class UplinkCounters:
    """What the uplink has done since it started (reported in health and by the CLI)."""

    queued: int = 0
    stored: int = 0
    dropped: int = 0
    published_messages: int = 0
    published_records: int = 0
    committed: int = 0
    replays: int = 0
    resends: int = 0
    store_errors: int = 0


class Uplink:
    """Moves records from memory to the outbox to the broker, and deletes them on commit."""

    def __init__(
        self,
        cfg: UplinkConfig,
        outbox: Outbox,
        transport: Transport | None,
        sequencer: Sequencer,
        codec: Codec,
        *,
        fleet: str,
        device_id: str,
        db_executor: Executor,
        clock: Callable[[], float] = time.time,
        on_store_error: StoreErrorSink | None = None,
    ) -> None:
        self.cfg = cfg
        self.outbox = outbox
        self.transport = transport
        self.seq = sequencer
        self.codec = codec
        self.fleet = fleet
        self.device_id = device_id
        self._db = db_executor
        self._clock = clock
        self._pending: list[tuple[int, str, str, str, Any]] = []
        self._pending_records = 0
        # Rows that already hold seqs but whose write failed: they go first in the next try,
        # so a failed write never burns seqs (no hole) and never reorders them.
        self._unstored: list[Row] = []
        # Records dropped from `_unstored` (memory bound while writes fail), not yet counted
        # in the outbox's persisted drop counter.
        self._memory_drops = 0
        self._failures = 0
        self._on_store_error = on_store_error
        self._rec_enc = msgspec.msgpack.Encoder()
        self._inf_dec = msgspec.msgpack.Decoder(InferenceRecord)
        self._read_dec = msgspec.msgpack.Decoder(ReadingRecord)
        self._inference_topic = topics.telemetry(fleet, device_id, "inference")
        self._cursor = 0
        self._unacked = 0
        # Bumped on every reconnect and resend: a read that straddles one is stale.
        self._session = 0
        # Bumped by every flush; a read that came back short (nothing past it) remembers the
        # value it started at, so the sender skips the outbox while nothing new was written
        # (each record wakes it three times: flush, PUBACK, commit).
        self._written = 0
        self._read_all = -1
        # (last row id, monotonic time) of each publish, oldest first, for resend decisions.
        self._sent: deque[tuple[int, float]] = deque()
        self._last_check = 0.0
        self._wake = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._stopping = False
        self.counters = UplinkCounters()
        # Set by the link before the first publish ([trust] record_key): every message sent
        # carries a MAC by it, computed at send time, so rows stored before it was set or by
        # an older agent go out MAC'd too.
        self.record_key: bytes | None = None
        # Commands refused by their authentication, by reason (the link points it at the
        # command guard's counter): reported in health.
        self.command_refusals: Mapping[str, int] = {}
        self.depth = outbox.depth
        self.drops = outbox.drops
        self.backlog = BacklogMonitor(device_id, outbox.drops)

    # ------------------------------------------------------------------ producing

    def add_results(self, model: str, version: str, results: Sequence[Result]) -> None:
        """Queue inference results of one model (the hot path: one append per chunk)."""
        if results:
            self._pending.append(
                (_INFERENCE, "inference", self._inference_topic, f"{model}@{version}", results)
            )
            self._pending_records += len(results)
            self.counters.queued += len(results)

    def add_readings(
        self,
        stream: str,
        channels: Sequence[str],
        t0: float,
        rate_hz: float,
        samples: npt.NDArray[np.float32],
    ) -> None:
        """Queue raw samples as a readings stream."""
        topic = topics.telemetry(self.fleet, self.device_id, stream)
        self._pending.append((_READINGS, stream, topic, ",".join(channels), (t0, rate_hz, samples)))
        self._pending_records += len(samples)
        self.counters.queued += len(samples)

    def add_message(self, stream: str, topic: str, factory: MessageFactory) -> None:
        """Queue one message (health, drift, event, ack) built once its seq is known."""
        self._pending.append((_SINGLE, stream, topic, "", factory))
        self._pending_records += 1
        self.counters.queued += 1

    @property
    def pending(self) -> int:
        """Records queued in memory, not yet in the outbox."""
        return self._pending_records

    def _encode(self, items: list[tuple[int, str, str, str, Any]]) -> list[Row]:
        """Give queued items their seqs and bytes (runs on the outbox thread)."""
        boot, enc = self.seq.boot_id, self._rec_enc.encode
        rows: list[Row] = []
        append = rows.append
        nxt = self.seq.next
        for kind, stream, topic, grp, src in items:
            if kind == _INFERENCE:
                for r in src:
                    seq = nxt()
                    rec = InferenceRecord(
                        seq=seq,
                        t=r.t,
                        outputs=r.outputs,
                        label=r.label,
                        score=r.score,
                        latency_ms=r.latency_ms,
                    )
                    append(Row(boot, seq, stream, topic, grp, False, enc(rec)))
            elif kind == _READINGS:
                t0, rate, samples = src
                for i, values in enumerate(samples.tolist()):
                    seq = nxt()
                    rec2 = ReadingRecord(seq=seq, t=t0 + i / rate, values=values)
                    append(Row(boot, seq, stream, topic, grp, False, enc(rec2)))
            else:
                seq = nxt()
                append(Row(boot, seq, stream, topic, grp, True, self.codec.encode(src(boot, seq))))
        return rows

    def _store(self, items: list[tuple[int, str, str, str, Any]]) -> None:
        """Encode ``items`` behind any rows left by a failed write, and append them all."""
        rows = self._unstored + self._encode(items)
        # Kept until the append commits: if it raises, the next flush retries the same rows.
        self._unstored = rows
        self.outbox.append(rows, self._memory_drops)
        self._unstored = []
        self._memory_drops = 0

    def _bound_unstored(self) -> None:
        """Past the outbox's own bounds, drop the oldest unwritten rows, counted as drops.

        The outbox's policy (drop oldest, count it) applied in memory: a disk that stays
        full must not grow the agent until the kernel kills it.
        """
        rows, box = self._unstored, self.outbox
        size = sum(len(r.payload) for r in rows)
        cut = 0
        while cut < len(rows) - 1 and (len(rows) - cut > box.max_records or size > box.max_bytes):
            size -= len(rows[cut].payload)
            cut += 1
        if cut:
            del rows[:cut]
            self._memory_drops += cut
            self._pending_records -= cut
            log.warning("dropped the %d oldest unwritten records (outbox bounds)", cut)

    @property
    def failing(self) -> int:
        """Flushes that failed in a row (0 while the outbox takes writes)."""
        return self._failures

    async def flush(self) -> bool:
        """Write everything queued to the outbox (one transaction) and wake the sender.

        Returns False if the write failed (an :class:`OutboxError`: disk full, I/O error): the
        records stay in memory, the ones already numbered keep their seqs, and the next flush
        writes them first. The failure is counted (``counters.store_errors``) and reported.
        """
        async with self._flush_lock:
            if not self._pending and not self._unstored:
                return True
            items, self._pending = self._pending, []
            # Count records as pending until they are in the outbox: `pending == 0` then
            # means "all of it is on disk", not "handed to the writer thread".
            n = self._pending_records
            loop = asyncio.get_running_loop()
            before = self.outbox.drops
            try:
                await loop.run_in_executor(self._db, self._store, items)
            except OutboxError as exc:
                # `items` now live (numbered) in `_unstored`; their count stays pending.
                self._bound_unstored()
                self._failures += 1
                self.counters.store_errors += 1
                log.error("writing the outbox failed (%d in a row): %s", self._failures, exc)
                if self._on_store_error is not None:
                    self._on_store_error(str(exc), self._failures)
                return False
            if self._failures:
                log.warning("the outbox takes writes again after %d failures", self._failures)
                self._failures = 0
                if self._on_store_error is not None:
                    self._on_store_error("", 0)
            self._pending_records -= n
            self.counters.stored += n
            self.counters.dropped += self.outbox.drops - before
            self.depth, self.drops = self.outbox.depth, self.outbox.drops
            self.backlog.observe(self.outbox)
            self._written += 1
            self._wake.set()
            return True

    # ------------------------------------------------------------------ sending

    def on_connected(self) -> None:
        """A new session: replay the outbox from its oldest row."""
        self._cursor = 0
        self._unacked = 0
        self._session += 1
        self._read_all = -1
        self._sent.clear()
        self.counters.replays += 1
        self._wake.set()

    def wake(self) -> None:
        """Something changed (PUBACK, commit, connection): let the sender look again."""
        self._wake.set()

    async def run(self) -> None:
        """Flush periodically and send whatever the window allows, until stopped."""
        flusher = asyncio.create_task(self._flush_loop())
        try:
            while not self._stopping:
                # asyncio.timeout, not wait_for: no task per wake-up (three per record sent).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self._wake.wait()
                self._wake.clear()
                if flusher.done():
                    # The flusher only ends on a bug (a failed write is retried): surface it
                    # so the agent's supervisor sees the uplink fail, not a silent stall.
                    flusher.result()
                    if not self._stopping:
                        raise RuntimeError("the outbox flusher stopped")
                await self._check_resend()
                await self._send_some()
        finally:
            flusher.cancel()

    async def _flush_loop(self) -> None:
        delay = self.cfg.flush_interval_s
        while not self._stopping:
            await asyncio.sleep(delay)
            if await self.flush():
                delay = self.cfg.flush_interval_s
            else:
                # Back off while the disk refuses writes: each try costs a transaction.
                delay = min(STORE_RETRY_MAX_S, max(delay, self.cfg.flush_interval_s) * 2)

    async def _check_resend(self) -> None:
        """Resend from the start when the oldest stored row was sent long ago and never committed.

        Commits of newer rows say nothing about older ones: a subscriber that came back after
        the device replayed (or an ingest that lost a batch) leaves holes only a resend fills.
        """
        now = time.monotonic()
        if now - self._last_check < 1.0 or not self._sent or not self.depth:
            return
        # Nothing was sent long enough ago to resend (the oldest publish is the first): skip
        # the outbox query, which at one record a second would otherwise run once per record.
        if now - self._sent[0][1] < self.cfg.resend_after_s:
            return
        self._last_check = now
        loop = asyncio.get_running_loop()
        oldest = await loop.run_in_executor(self._db, self.outbox.oldest_id)
        sent = self._sent
        while sent and oldest is not None and sent[0][0] < oldest:
            sent.popleft()
        if oldest is None or not sent or now - sent[0][1] < self.cfg.resend_after_s:
            return
        self._cursor = 0
        self._unacked = 0
        self._session += 1
        self._read_all = -1
        self._sent.clear()
        self.counters.resends += 1

    def stop(self) -> None:
        """Stop sending and flushing; queued records stay in memory (flush first to keep them)."""
        self._stopping = True
        self._wake.set()

    async def _send_some(self) -> None:
        t = self.transport
        loop = asyncio.get_running_loop()
        limit = self.cfg.batch_max * 4
        while (
            t is not None
            and t.connected
            and not self._stopping
            and t.pending < self.cfg.max_pending_publishes
            and self._unacked < self.cfg.max_unacked
        ):
            if self._read_all == self._written:
                return  # everything stored was read and nothing was written since
            session, written = self._session, self._written
            rows = await loop.run_in_executor(self._db, self.outbox.read_after, self._cursor, limit)
            if session != self._session:
                continue  # reconnected while reading: start again from the new cursor
            if not rows:
                self._read_all = written
                return
            for batch in self._batches(rows):
                if t.pending >= self.cfg.max_pending_publishes:
                    return
                topic, payload, count = self._message(batch)
                if self.record_key is not None:
                    payload = seal_record(self.record_key, topic, payload, self.device_id)
                if not t.publish(topic, payload):
                    return
                self._cursor = batch[-1].id
                self._sent.append((self._cursor, time.monotonic()))
                self._unacked += count
                self.counters.published_messages += 1
                self.counters.published_records += count
            if len(rows) < limit:
                # All sent, and nothing lay past them when the read started.
                self._read_all = written

    def _batches(self, rows: list[StoredRow]) -> list[list[StoredRow]]:
        out: list[list[StoredRow]] = []
        cur: list[StoredRow] = []
        size = 0
        cap = self.cfg.batch_max
        for r in rows:
            if r.single:
                if cur:
                    out.append(cur)
                    cur, size = [], 0
                out.append([r])
                continue
            if cur and (
                len(cur) >= cap
                or size + len(r.payload) > MAX_PAYLOAD_BYTES // 3
                or (r.boot_id, r.stream, r.grp) != (cur[0].boot_id, cur[0].stream, cur[0].grp)
            ):
                out.append(cur)
                cur, size = [], 0
            cur.append(r)
            size += len(r.payload)
        if cur:
            out.append(cur)
        return out

    def _message(self, batch: list[StoredRow]) -> tuple[str, bytes, int]:
        first = batch[0]
        if first.single:
            return first.topic, first.payload, 1
        now = self._clock()
        msg: Envelope
        if first.stream == "inference":
            model, _, version = first.grp.rpartition("@")
            dec = self._inf_dec.decode
            msg = InferenceBatch(
                device_id=self.device_id,
                boot_id=first.boot_id,
                seq=first.seq,
                sent_at=now,
                model=model,
                model_version=version,
                records=[dec(r.payload) for r in batch],
            )
        else:
            dec2 = self._read_dec.decode
            msg = ReadingBatch(
                device_id=self.device_id,
                boot_id=first.boot_id,
                seq=first.seq,
                sent_at=now,
                channels=first.grp.split(","),
                records=[dec2(r.payload) for r in batch],
            )
        return first.topic, self.codec.encode(msg), len(batch)

    # ------------------------------------------------------------------ commits

    async def on_commit(self, commit: Commit) -> int:
        """Delete what the cloud committed; returns the number of rows deleted."""
        ranges: list[CommitRange] = list(commit.ranges)
        loop = asyncio.get_running_loop()
        deleted = await loop.run_in_executor(self._db, self.outbox.commit, ranges)
        self.counters.committed += deleted
        self._unacked = max(0, self._unacked - sum(r.last - r.first + 1 for r in ranges))
        self.depth = self.outbox.depth
        self.backlog.observe(self.outbox)
        self._wake.set()
        return deleted
