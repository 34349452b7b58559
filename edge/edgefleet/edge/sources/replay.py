"""Replay samples recorded in a CSV or JSON-lines file, paced in real time or at full speed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from edgefleet.edge.errors import SourceError
from edgefleet.edge.sources.base import Chunk
from edgefleet.edge.sources.lines import csv_header, parse_line


class ReplaySource:
    """Reads a whole recording into memory and hands it out ``chunk`` samples at a time."""

    def __init__(
        self,
        path: Path,
        *,
        fmt: str = "csv",
        channels: Sequence[str] = (),
        rate_hz: float = 400.0,
        chunk: int = 40,
        realtime: bool = False,
        loop: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        try:
            lines = Path(path).read_text().splitlines()
        except OSError as exc:
            raise SourceError(f"cannot read replay file {path}: {exc.strerror}") from None
        chans = list(channels)
        if fmt == "csv" and not chans and lines:
            chans = csv_header(lines[0]) or []
        if not chans:
            raise SourceError(
                f"{path}: name the channels (source.channels) or give the CSV a header line"
            )
        rows = [s for s in (parse_line(line, fmt, chans) for line in lines) if s is not None]
        if not rows:
            raise SourceError(f"{path} holds no samples")
        self.channels = tuple(chans)
        self.rate_hz = float(rate_hz)
        self._data = np.asarray([v for _, v in rows], dtype=np.float32)
        self._chunk = chunk
        self._realtime = realtime
        self._loop = loop
        self._clock = clock
        self._pos = 0
        self._sent = 0
        self._start: float | None = None
        self._t0 = 0.0

    async def read(self) -> Chunk | None:
        """The next chunk of the recording, or None at its end (unless looping)."""
        if self._pos >= len(self._data):
            if not self._loop:
                return None
            self._pos = 0
        if self._start is None:
            self._start, self._t0 = time.monotonic(), self._clock()
        samples = self._data[self._pos : self._pos + self._chunk]
        if self._realtime:
            delay = self._start + (self._sent + len(samples)) / self.rate_hz - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        t0 = self._t0 + self._sent / self.rate_hz
        self._pos += len(samples)
        self._sent += len(samples)
        return Chunk(t0, samples)

    def close(self) -> None:
        """Nothing to release."""
