"""The stage on a thread of the worker's own process (shares the GIL with the network thread)."""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import threading
import time
from collections import deque

from edgefleet.cloud.ingest.base import Chunk, Outcome
from edgefleet.cloud.ingest.core import IngestCore
from edgefleet.cloud.ingest.settings import IngestSettings
from edgefleet.cloud.store.base import TelemetryStore

log = logging.getLogger(__name__)
# Chunks waiting for the stage thread; past that the network thread blocks and stops reading,
# and the broker queues (backpressure instead of unbounded memory).
MAX_WAITING_CHUNKS = 8


class ThreadStage:
    """Runs an :class:`IngestCore` on one thread, writing with the worker's own store."""

    def __init__(self, settings: IngestSettings, store: TelemetryStore) -> None:
        self._stop = threading.Event()
        self._core = IngestCore(settings, store, self._stop.is_set)
        self._chunks: queue.Queue[Chunk | None] = queue.Queue(maxsize=MAX_WAITING_CHUNKS)
        self._done: deque[Outcome] = deque()
        self._cpu = 0.0
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread = threading.Thread(
            target=self._run, name=f"ingest-stage-{settings.client_id}", daemon=True
        )

    pid: int | None = None  # runs in the worker's own process
    restarts = 0  # a thread is not replaced

    def start(self, timeout: float) -> None:
        """Start the stage thread."""
        self._thread.start()

    def submit(self, chunk: Chunk) -> None:
        """Queue a chunk (blocks while MAX_WAITING_CHUNKS wait, never for a dead thread)."""
        while True:
            try:
                self._chunks.put(chunk, timeout=1.0)
                return
            except queue.Full:
                if not self._thread.is_alive():
                    # Dropped, never acked: the devices resend it.
                    log.error(
                        "ingest: the stage thread is gone; dropping %d messages",
                        len(chunk.messages),
                    )
                    return

    def fileno(self) -> int:
        """The wake-up socket, readable when outcomes wait."""
        return self._wake_r.fileno()

    def outcomes(self) -> list[Outcome]:
        """Outcomes finished so far."""
        with contextlib.suppress(BlockingIOError):
            while self._wake_r.recv(4096):
                pass
        out = []
        while self._done:
            out.append(self._done.popleft())
        return out

    def close(self, timeout: float) -> list[Outcome]:
        """Flush, stop the thread and return the last outcomes."""
        if self._thread.is_alive():
            try:
                self._chunks.put(None, timeout=timeout)
            except queue.Full:
                self._stop.set()  # stuck retrying a failing store: give the batch up
                self._chunks.put(None)
            self._thread.join(timeout)
            self._stop.set()  # a store still failing after the timeout: give the batch up
            self._thread.join(1.0)
        out = self.outcomes()
        self._wake_r.close()
        self._wake_w.close()
        return out

    def _run(self) -> None:
        core = self._core
        self._cpu = time.thread_time()
        while True:
            try:
                wait = core.due_in(time.time())
                if wait is not None and wait <= 0:
                    self._emit(core.flush())
                    continue
                try:
                    chunk = self._chunks.get(timeout=wait)
                except queue.Empty:
                    continue
                if chunk is None:
                    break
                core.feed(chunk)
            except Exception:
                # The thread must outlive any bug: a dead one would leave the network thread
                # blocked on a full queue. What the core held is lost, unacked, and resent.
                log.exception("ingest: the stage failed; its pending batch is dropped")
                core.discard()
        self._stop.set()
        try:
            self._emit(core.flush())
        except Exception:
            log.exception("ingest: the last batch could not be written; it is not acked")

    def _emit(self, outcome: Outcome | None) -> None:
        if outcome is None:
            return
        cpu = time.thread_time()
        outcome.cpu_s, self._cpu = cpu - self._cpu, cpu
        self._done.append(outcome)
        # A full socket buffer means a wake-up is already pending.
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"x")
