"""The stage in a child process: decoding and SQL run beside the network thread."""

from __future__ import annotations

import contextlib
import fcntl
import gc
import logging
import multiprocessing as mp
import queue
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from edgefleet.cloud.errors import StoreError
from edgefleet.cloud.ingest.base import Chunk, Outcome
from edgefleet.cloud.ingest.core import IngestCore
from edgefleet.cloud.ingest.settings import IngestSettings
from edgefleet.cloud.store.base import TelemetryStore

log = logging.getLogger(__name__)
READY = "ready"
RESTART_EVERY_S = 1.0
PIPE_BYTES = 1 << 20


class ProcessStage:
    """Runs an :class:`IngestCore` in a child process that opens the store by its URL.

    Chunks go down one pipe, outcomes come up another. When the pipe is full the network
    thread blocks and stops reading (backpressure). The child sends outcomes from a thread of
    its own, so it never blocks on a parent that is itself blocked sending a chunk. If the
    child dies, what it held was PUBACKed but never committed: the devices resend it, and a new
    child takes over.
    """

    def __init__(self, settings: IngestSettings, store: TelemetryStore) -> None:
        self.settings = settings
        self.store_url = store.url
        self._restarts = 0
        self._ctx = mp.get_context("spawn")  # never fork a process that runs threads
        self._proc: Any = None
        self._chunks: Connection | None = None
        self._results: Connection | None = None
        self._next_try = 0.0

    @property
    def pid(self) -> int | None:
        """The child's process id (None while it is being replaced)."""
        return None if self._proc is None else int(self._proc.pid)

    @property
    def restarts(self) -> int:
        """How many children replaced one that died."""
        return self._restarts

    def start(self, timeout: float) -> None:
        """Spawn the child and wait until it has opened the store."""
        results_r, results_w = self._ctx.Pipe(duplex=False)
        chunks_r, chunks_w = self._ctx.Pipe(duplex=False)
        proc = self._ctx.Process(
            target=run_child,
            args=(self.settings, self.store_url, chunks_r, results_w),
            name=f"ingest-stage-{self.settings.client_id}",
            daemon=True,
        )
        _widen(chunks_w)
        proc.start()
        chunks_r.close()
        results_w.close()
        self._proc, self._chunks, self._results = proc, chunks_w, results_r
        try:
            first = results_r.recv() if results_r.poll(timeout) else "no answer"
        except EOFError:
            first = "exited"
        if first != READY:
            self._discard(timeout=1.0)
            raise StoreError(
                f"the ingest store process for {self.store_url} did not start: {first}",
                reason="ingest-not-ready",
            )

    def submit(self, chunk: Chunk) -> None:
        """Send a chunk; a dead child is replaced (the chunk is dropped, and never acked)."""
        if self._chunks is None and not self._restart():
            return
        assert self._chunks is not None
        try:
            self._chunks.send(chunk)
        except OSError as exc:
            self._lost(f"cannot send to the store process: {exc}")

    def fileno(self) -> int:
        """The outcome pipe (or a closed one's -1 while the child is being replaced)."""
        return self._results.fileno() if self._results is not None else -1

    def outcomes(self) -> list[Outcome]:
        """Outcomes the child sent so far."""
        out: list[Outcome] = []
        conn = self._results
        try:
            while conn is not None and conn.poll():
                item = conn.recv()
                if isinstance(item, Outcome):
                    out.append(item)
        except (EOFError, OSError):
            self._lost("the store process exited")
        return out

    def close(self, timeout: float) -> list[Outcome]:
        """Let the child write what it holds, collect its last outcomes, and reap it."""
        out: list[Outcome] = []
        if self._chunks is not None and self._results is not None:
            with contextlib.suppress(OSError):
                self._chunks.send(None)
            deadline = time.monotonic() + timeout
            try:
                while self._results.poll(max(0.0, deadline - time.monotonic())):
                    item = self._results.recv()
                    if item is None:
                        break
                    out.append(item)
            except (EOFError, OSError):
                pass
        self._discard(timeout)
        return out

    def _lost(self, why: str) -> None:
        log.error("ingest: %s; starting a new one (unacked records will be resent)", why)
        self._discard(timeout=1.0)

    def _restart(self) -> bool:
        now = time.monotonic()
        if now < self._next_try:
            return False
        self._next_try = now + RESTART_EVERY_S
        try:
            self.start(timeout=30.0)
        except StoreError as exc:
            log.error("ingest: %s", exc)
            return False
        self._restarts += 1
        return True

    def _discard(self, timeout: float) -> None:
        for conn in (self._chunks, self._results):
            if conn is not None:
                conn.close()
        self._chunks = self._results = None
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.join(timeout)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout)


def _widen(conn: Connection) -> None:
    """Give the chunk pipe 1 MiB (Linux), so the network thread keeps reading during a COMMIT.

    With the default 64 KiB one chunk fills the pipe, and the network thread would stop
    reading every time the child waits for its fsync.
    """
    size = getattr(fcntl, "F_SETPIPE_SZ", None)
    if size is not None:
        with contextlib.suppress(OSError):  # over /proc/sys/fs/pipe-max-size: keep the default
            fcntl.fcntl(conn.fileno(), size, PIPE_BYTES)


def run_child(
    settings: IngestSettings, store_url: str, chunks: Connection, results: Connection
) -> None:
    """Child process: open the store, then feed chunks to an IngestCore until told to stop.

    It also stops when the parent disappears (the chunk pipe reaches EOF): what it holds is
    written, and nothing is acked by anyone, so the devices resend it.
    """
    # Ctrl-C reaches the whole process group; the parent decides when this process stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from edgefleet.cloud.store import open_store

    try:
        store = open_store(store_url)
    except Exception as exc:  # reported to the parent as text
        results.send(f"{type(exc).__name__}: {exc}")
        return
    outbox: queue.SimpleQueue[Outcome | None] = queue.SimpleQueue()
    sender = threading.Thread(target=_send_loop, args=(outbox, results), daemon=True)
    results.send(READY)
    sender.start()
    core = IngestCore(settings, store)
    # What the imports and the store made lives as long as the process: frozen, a full
    # collection no longer walks it (10-40 ms each when it did, measured in process).
    gc.collect()
    gc.freeze()
    cpu = time.process_time()

    def emit(outcome: Outcome) -> None:
        nonlocal cpu
        now = time.process_time()
        outcome.cpu_s, cpu = now - cpu, now
        outbox.put(outcome)

    try:
        _feed_loop(core, chunks, emit)
    finally:
        outbox.put(None)
        sender.join()
        store.close()


def _feed_loop(core: IngestCore, chunks: Connection, emit: Callable[[Outcome], None]) -> None:
    while True:
        try:
            wait = core.due_in(time.time())
            if wait is not None and wait <= 0:
                if (outcome := core.flush()) is not None:
                    emit(outcome)
                continue
            if not chunks.poll(wait):
                continue
            try:
                chunk = chunks.recv()
            except (EOFError, OSError):
                chunk = None  # the parent is gone
            if chunk is None:
                break
            core.feed(chunk)
        except Exception:
            # Dying would cost a restart and the chunks in the pipe; dropping the pending
            # batch costs only that (unacked, so resent).
            log.exception("ingest: the stage failed; its pending batch is dropped")
            core.discard()
    if (outcome := core.flush()) is not None:
        emit(outcome)


def _send_loop(outbox: queue.SimpleQueue[Outcome | None], results: Connection) -> None:
    while True:
        item = outbox.get()
        with contextlib.suppress(OSError):
            results.send(item)  # None last: the parent's close() stops reading there
        if item is None:
            results.close()
            return
