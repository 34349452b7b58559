"""Sources of simulated devices: seeded signals drawn in blocks, or an emulated MCU via the bridge.

Both are wrapped in :class:`FleetSource`, which adds what the timeline needs (the run's start,
pacing, slow device, drift, the end of the run) without touching the agent: the agent only
sees the Source seam.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Protocol

import numpy as np

from edgefleet.edge.sources.base import Chunk, Source
from edgefleet.firmware_bridge import EmulatorConfig, McuEmulator, SampleBatch, SerialLink
from edgefleet.firmware_bridge.errors import LinkError
from edgefleet.signals import Drift, make_signal

# A seeded signal is drawn at least this many samples at a time (whole chunks): a 1 Hz device
# would otherwise pay numpy's per-call overhead (tens of microseconds) for every sample.
BLOCK_SAMPLES = 32
# A change of the wall clock against the monotonic one larger than this is a jump (a clock-skew
# event, an NTP step), not scheduling jitter: the stamps of later samples follow it.
JUMP_S = 0.5


class BlockSource:
    """A seeded :mod:`edgefleet.signals` generator, drawn in blocks, handed out a chunk per read.

    Stamps like the agent's ``SimulatedSource``: the first sample at the wall-clock time of the
    first read, then one sample period apart. When the wall clock jumps (a clock-skew event:
    the device's ``clock`` moves against the monotonic clock by more than ``JUMP_S``), the
    stamps move with it from the next chunk on, as a sensor stamped by that clock would. Unpaced:
    :class:`FleetSource` paces it. A drift discards the rest of the block, so it applies from
    the next chunk on (the waveform skips ahead by at most one block at that instant).
    """

    def __init__(
        self,
        signal: str,
        seed: int,
        *,
        rate_hz: float,
        chunk: int,
        variation: float = 1.0,
        clock: Callable[[], float] = time.time,
        block_samples: int = BLOCK_SAMPLES,
    ) -> None:
        self._signal = make_signal(signal, seed, rate_hz=rate_hz, variation=variation)
        self.channels = tuple(self._signal.channels)
        self.rate_hz = float(rate_hz)
        self._chunk = chunk
        self._block = chunk * max(1, block_samples // chunk)
        self._clock = clock
        self._buf = np.empty((0, len(self.channels)), dtype=np.float32)
        self._pos = 0
        self._sent = 0
        self._t0: float | None = None
        self._wall_minus_mono = 0.0

    def _stamp(self) -> float:
        """The next chunk's first stamp, re-based when the device's wall clock has jumped."""
        wall, mono = self._clock(), time.monotonic()
        if self._t0 is None:
            self._t0, self._wall_minus_mono = wall, wall - mono
            return wall
        jump = (wall - mono) - self._wall_minus_mono
        if abs(jump) > JUMP_S:
            self._t0 += jump
            self._wall_minus_mono += jump
        return self._t0 + self._sent / self.rate_hz

    def set_drift(self, drift: Drift | None) -> None:
        """Apply (or remove) drift from the next chunk on."""
        self._signal.set_drift(drift)
        self._pos = len(self._buf)

    async def read(self) -> Chunk:
        """The next chunk, at once."""
        t0 = self._stamp()
        if self._pos >= len(self._buf):
            self._buf = self._signal.read(self._block)
            self._pos = 0
        samples = self._buf[self._pos : self._pos + self._chunk].copy()
        self._pos += self._chunk
        self._sent += self._chunk
        return Chunk(t0, samples)

    def close(self) -> None:
        """Nothing to release."""


class SignalSamples:
    """A seeded :mod:`edgefleet.signals` generator as an emulated MCU's ``SampleSource``.

    The bridge may not import our signals (it depends on nothing of ours); the emulator takes
    any ``SampleSource``, and this one gives serial devices the fleet's realistic signals and
    its drift events.
    """

    def __init__(self, signal: str, seed: int, *, rate_hz: float, variation: float) -> None:
        self._signal = make_signal(signal, seed, rate_hz=rate_hz, variation=variation)
        self.channels = tuple(self._signal.channels)

    def read(self, n: int) -> list[list[float]]:
        """The next ``n`` rows."""
        rows: list[list[float]] = self._signal.read(n).tolist()
        return rows

    def set_drift(self, drift: Drift | None) -> None:
        """Drift from the next batch the MCU draws on."""
        self._signal.set_drift(drift)


class BridgeSource:
    """Samples from an in-process emulated MCU on a pty, read by the real SerialLink.

    The link reads the pty with ``loop.add_reader`` (no thread), so hundreds of these share the
    simulator's event loop. The emulator draws the device's seeded signal (:class:`SignalSamples`),
    so drift events reach serial devices too.
    """

    def __init__(
        self,
        seed: int,
        *,
        rate_hz: float,
        chunk: int,
        signal: str = "vibration",
        variation: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.samples = SignalSamples(signal, seed, rate_hz=rate_hz, variation=variation)
        self.channels: tuple[str, ...] = self.samples.channels
        self.rate_hz = float(rate_hz)
        self._chunk = chunk
        self._clock = clock
        batch = max(1, min(50, chunk))
        self.mcu = McuEmulator(
            EmulatorConfig(rate_hz=rate_hz, channels=len(self.channels), batch=batch, seed=seed),
            samples=self.samples,
        )
        self.link: SerialLink | None = None
        self._rows: list[tuple[float, ...]] = []
        self._t0: float | None = None
        self._closing: set[asyncio.Task[None]] = set()

    async def start(self) -> BridgeSource:
        """Plug the emulated MCU in and open the link to it."""
        await self.mcu.start()
        self.link = await SerialLink(
            self.mcu.path, channels=self.channels, read_timeout=5.0, open_timeout=5.0
        ).open()
        return self

    async def read(self) -> Chunk | None:
        """The next ``chunk`` rows the MCU sent (host time of their arrival)."""
        assert self.link is not None, "start() the bridge source first"
        while len(self._rows) < self._chunk:
            try:
                reading = await self.link.receive()
            except LinkError:
                continue  # stalled or replugged: the link reconnects, the device waits
            if isinstance(reading, SampleBatch):
                if not self._rows:
                    self._t0 = self._clock()
                self._rows.extend(reading.values)
        rows, self._rows = self._rows[: self._chunk], self._rows[self._chunk :]
        t0 = self._t0 if self._t0 is not None else self._clock()
        self._t0 = self._clock() if self._rows else None
        return Chunk(t0, np.asarray(rows, dtype=np.float32))

    def set_drift(self, drift: Drift | None) -> None:
        """Drift the signal the emulated MCU samples."""
        self.samples.set_drift(drift)

    def close(self) -> None:
        """Close the link and unplug the MCU (in the background: close is synchronous)."""
        loop = asyncio.get_event_loop()
        if self.link is not None:
            self._closing.add(loop.create_task(self.link.close()))
        self._closing.add(loop.create_task(self.mcu.stop()))


class InnerSource(Source, Protocol):
    """What :class:`FleetSource` wraps: a Source whose signal can drift."""

    def set_drift(self, drift: Drift | None) -> None:
        """Apply (or with None remove) drift."""
        ...


class FleetSource:
    """Wraps a device's source: the run's start, a phase, pacing, slow device, drift, the end.

    An unpaced inner source (:class:`BlockSource`) is paced here with one timer per chunk:
    the chunk is drawn when its first sample is taken and handed over when its last one would
    have been (as the agent's real-time source does), and :meth:`finish` wakes a waiting read
    at once. Reads wait for ``start`` (the run's go: a device producing while the rest of its
    process still boots would measure the boot storm, not the fleet), then for the device's
    ``phase_s``, so a fleet of 1 Hz devices does not read in lockstep.
    """

    def __init__(
        self,
        inner: InnerSource,
        *,
        paced_chunk: int = 0,
        start: asyncio.Event | None = None,
        phase_s: float = 0.0,
    ) -> None:
        self.inner = inner
        self.channels = inner.channels
        self.rate_hz = inner.rate_hz
        self.delay_s = 0.0
        self.chunks = 0
        # Samples handed to the agent (what a publish_readings device must account for).
        self.samples = 0
        self._paced_chunk = paced_chunk
        self._start = start
        self._phase_s = phase_s
        self._began: float | None = None
        self._samples = 0
        self._finished = asyncio.Event()
        self._waiter: asyncio.Future[None] | None = None

    def finish(self) -> None:
        """End of the run: the next read returns None, so the agent flushes and idles."""
        self._finished.set()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def set_drift(self, drift: Drift | None) -> None:
        """Apply (or with None remove) drift from the next sample on."""
        self.inner.set_drift(drift)

    async def _until(self, when: float) -> None:
        """Sleep until loop time ``when``, or until :meth:`finish`."""
        loop = asyncio.get_running_loop()
        if when <= loop.time() or self._finished.is_set():
            return
        self._waiter = fut = loop.create_future()
        handle = loop.call_at(when, _wake, fut)
        try:
            await fut
        finally:
            handle.cancel()
            self._waiter = None

    async def _begin(self) -> None:
        if self._start is not None and not self._start.is_set():
            gate = asyncio.ensure_future(self._start.wait())
            done = asyncio.ensure_future(self._finished.wait())
            try:
                await asyncio.wait((gate, done), return_when=asyncio.FIRST_COMPLETED)
            finally:
                gate.cancel()
                done.cancel()
        loop = asyncio.get_running_loop()
        await self._until(loop.time() + self._phase_s)
        self._began = loop.time()

    async def read(self) -> Chunk | None:
        """The inner source's next chunk, late by ``delay_s`` while the device is slow."""
        if self._began is None:
            await self._begin()
        if self._finished.is_set():
            return None
        if self._paced_chunk:
            chunk: Chunk | None = await self.inner.read()
            if chunk is not None:
                self._samples += len(chunk.samples)
                assert self._began is not None
                await self._until(self._began + self._samples / self.rate_hz)
                if self._finished.is_set():
                    return None
        else:
            chunk = await self._unpaced()
        if chunk is None:
            return None
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        self.chunks += 1
        self.samples += len(chunk.samples)
        return chunk

    async def _unpaced(self) -> Chunk | None:
        """A read of a source that paces itself (the emulated MCU), cut short by finish()."""
        read = asyncio.ensure_future(self.inner.read())
        done = asyncio.ensure_future(self._finished.wait())
        try:
            await asyncio.wait((read, done), return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Cancelled mid-wait (a crash or stop): neither helper may outlive this read.
            done.cancel()
            if not read.done():
                read.cancel()
        if read.cancelled() or not read.done():
            with contextlib.suppress(asyncio.CancelledError):
                await read
            return None
        return read.result()

    def close(self) -> None:
        """Close the inner source."""
        self.inner.close()


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _check_protocol(s: FleetSource) -> Source:
    return s  # FleetSource satisfies the agent's Source seam (checked by mypy)
