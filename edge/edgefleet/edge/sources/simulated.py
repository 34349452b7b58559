"""A seeded simulated sensor on :mod:`edgefleet.signals`, paced in real time or as fast as asked."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from edgefleet.edge.sources.base import Chunk
from edgefleet.signals import Drift, make_signal


class SimulatedSource:
    """Reads ``chunk`` samples at a time from a seeded signal generator."""

    def __init__(
        self,
        signal: str = "vibration",
        seed: int = 0,
        *,
        rate_hz: float = 400.0,
        chunk: int = 40,
        variation: float = 1.0,
        realtime: bool = True,
        limit_samples: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._signal = make_signal(signal, seed, rate_hz=rate_hz, variation=variation)
        self.channels = tuple(self._signal.channels)
        self.rate_hz = float(rate_hz)
        self._chunk = chunk
        self._realtime = realtime
        self._limit = limit_samples
        self._clock = clock
        self._sent = 0
        self._start: float | None = None
        self._t0 = 0.0

    def set_drift(self, drift: Drift | None) -> None:
        """Apply (or remove) drift from the next sample on (the simulator injects faults here)."""
        self._signal.set_drift(drift)

    async def read(self) -> Chunk | None:
        """The next chunk; in real time it waits until its last sample would have been taken."""
        n = self._chunk
        if self._limit:
            n = min(n, self._limit - self._sent)
            if n <= 0:
                return None
        if self._start is None:
            self._start = time.monotonic()
            self._t0 = self._clock()
        if self._realtime:
            due = self._start + (self._sent + n) / self.rate_hz
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        samples = self._signal.read(n)
        t0 = self._t0 + self._sent / self.rate_hz
        self._sent += n
        return Chunk(t0, samples)

    def close(self) -> None:
        """Nothing to release."""
