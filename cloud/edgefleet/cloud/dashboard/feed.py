"""The live feed: ONE thread reads the store at a bounded rate while anyone watches, keeps diffs."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from edgefleet.cloud.dashboard.snapshot import Snapshot
from edgefleet.protocol.errors import EdgefleetError

log = logging.getLogger(__name__)


class LiveFeed:
    """Polls ``take()`` every ``interval_s`` while at least one viewer is subscribed.

    The cost is independent of the message rate and of the number of viewers: one snapshot
    per interval, diffed against the last. Ingest never calls into the dashboard, so a slow
    browser can never slow ingest down; it only falls behind and gets a full snapshot.
    """

    def __init__(
        self,
        take: Callable[[], Snapshot],
        *,
        interval_s: float = 1.0,
        idle_stop_s: float = 10.0,
        history: int = 32,
    ) -> None:
        self._take = take
        self.interval_s = interval_s
        self.idle_stop_s = idle_stop_s
        self._cond = threading.Condition()
        self._viewers = 0
        self._last_viewer_left = time.monotonic()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.version = 0
        self.snapshot: Snapshot | None = None
        self._diffs: deque[tuple[int, dict[str, Any]]] = deque(maxlen=history)
        self.polls = 0
        self.poll_seconds = 0.0
        # CPU of the polling thread alone (wall time above also counts waiting for the store).
        self.poll_cpu_seconds = 0.0

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran: streams end, no new thread starts."""
        return self._closed

    @property
    def viewers(self) -> int:
        """How many streams are subscribed now."""
        return self._viewers

    @property
    def running(self) -> bool:
        """True while the polling thread exists (it reads the store once per interval)."""
        with self._cond:
            return self._thread is not None

    @contextmanager
    def subscription(self) -> Iterator[None]:
        """Count one viewer while the block runs; starts the polling thread if needed."""
        with self._cond:
            self._viewers += 1
            if not self._closed and (self._thread is None or not self._thread.is_alive()):
                self._thread = threading.Thread(
                    target=self._run, name="dashboard-feed", daemon=True
                )
                self._thread.start()
        try:
            yield
        finally:
            with self._cond:
                self._viewers -= 1
                if self._viewers == 0:
                    self._last_viewer_left = time.monotonic()

    def since(self, version: int) -> list[dict[str, Any]] | None:
        """Diffs after ``version`` in order, or None if they are no longer kept."""
        with self._cond:
            if version == self.version:
                return []
            if not self._diffs or self._diffs[0][0] > version + 1:
                return None
            return [d for v, d in self._diffs if v > version]

    def current(self) -> tuple[int, Snapshot | None]:
        """The newest version and snapshot."""
        with self._cond:
            return self.version, self.snapshot

    def poll_once(self) -> None:
        """Take one snapshot and record the diff (the thread calls this; tests may too)."""
        t0, c0 = time.perf_counter(), time.thread_time()
        snap = self._take()
        self.polls += 1
        self.poll_seconds += time.perf_counter() - t0
        self.poll_cpu_seconds += time.thread_time() - c0
        with self._cond:
            old = self.snapshot
            if old is None:
                self.version += 1
                self.snapshot = snap
            else:
                diff = snap.diff(old, self.version + 1)
                if diff is not None:
                    self.version += 1
                    self._diffs.append((self.version, diff))
                self.snapshot = snap
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                idle = self._viewers == 0 and (
                    time.monotonic() - self._last_viewer_left >= self.idle_stop_s
                )
                if self._closed or idle:
                    self._thread = None
                    # Nobody watches, so nothing keeps this state current: a viewer who comes
                    # back must see the fleet as it is then, not as it was when the feed stopped.
                    self.snapshot = None
                    self._diffs.clear()
                    return
            started = time.monotonic()
            try:
                self.poll_once()
            except EdgefleetError as exc:  # a store hiccup: keep the last snapshot, retry
                log.warning("dashboard feed: %s", exc)
            with self._cond:
                left = self.interval_s - (time.monotonic() - started)
                if left > 0 and not self._closed:
                    self._cond.wait(left)

    def close(self) -> None:
        """Stop the thread and end every stream at its next tick."""
        with self._cond:
            self._closed = True
            thread = self._thread
            self._cond.notify_all()
        if thread is not None:
            thread.join(5)
