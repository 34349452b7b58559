"""Token buckets: per device (a flooding device is slowed alone) and one over all quarantine."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float
    dropped: int = 0
    last_report: float = -1e18


@dataclass(slots=True)
class QuarantineCap:
    """One bucket over every quarantine row, whatever device id a message claims.

    Per-device buckets do not bound a flood that rotates device ids (5,000 ids wrote 58k rows
    in 13 s before this cap). Rows over ``rate`` a second (bursts up to ``burst``) or over
    ``byte_rate`` stored bytes a second are counted in :attr:`dropped`, not written; one
    ``quarantine-capped`` row per ``report_every`` seconds says how many were dropped.
    """

    rate: float = 100.0
    burst: float = 1000.0
    byte_rate: float = 256_000.0
    byte_burst: float = 2_560_000.0
    report_every: float = 1.0
    dropped: int = 0
    _rows: float = -1.0
    _bytes: float = -1.0
    _stamp: float = 0.0
    _last_report: float = -1e18

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1 or self.byte_rate <= 0 or self.byte_burst < 1:
            raise ValueError("a quarantine cap needs rates > 0 and bursts >= 1")
        self._rows, self._bytes = self.burst, self.byte_burst

    def admit(self, now: float, size: int) -> bool:
        """Take one row of ``size`` stored bytes; False (and counted) when over the cap."""
        elapsed = max(0.0, now - self._stamp)
        self._stamp = max(self._stamp, now)
        self._rows = min(self.burst, self._rows + elapsed * self.rate)
        self._bytes = min(self.byte_burst, self._bytes + elapsed * self.byte_rate)
        if self._rows >= 1.0 and self._bytes >= size:
            self._rows -= 1.0
            self._bytes -= size
            return True
        self.dropped += 1
        return False

    def should_report(self, now: float) -> bool:
        """True at most once per ``report_every`` seconds while rows are being dropped."""
        if now - self._last_report < self.report_every:
            return False
        self._last_report = now
        return True


@dataclass(slots=True)
class Throttle:
    """Token bucket per device: ``rate`` messages per second, bursts up to ``burst``.

    Messages over the limit are dropped and counted; the device resends them later because
    nothing it sent over the limit is committed. One sample per ``report_every`` seconds per
    device goes to quarantine (reason ``throttled``) so operators see who floods.
    """

    rate: float = 500.0
    burst: float = 5000.0
    report_every: float = 1.0
    max_devices: int = 1_000_000
    quarantine: QuarantineCap = field(default_factory=QuarantineCap)
    _buckets: dict[str, _Bucket] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError("a throttle needs rate > 0 and burst >= 1")

    def allow(self, device: str, now: float) -> bool:
        """Take one token for ``device``; False when its bucket is empty."""
        b = self._buckets.get(device)
        if b is None:
            if len(self._buckets) >= self.max_devices:
                self._evict(now)
            b = self._buckets[device] = _Bucket(self.burst, now)
        b.tokens = min(self.burst, b.tokens + (now - b.stamp) * self.rate)
        b.stamp = now
        if b.tokens >= 1.0:
            b.tokens -= 1.0
            return True
        b.dropped += 1
        return False

    def should_report(self, device: str, now: float) -> bool:
        """True at most once per ``report_every`` seconds for a throttled device."""
        b = self._buckets.get(device)
        if b is None or now - b.last_report < self.report_every:
            return False
        b.last_report = now
        return True

    def dropped(self, device: str) -> int:
        """Messages of ``device`` dropped so far."""
        b = self._buckets.get(device)
        return 0 if b is None else b.dropped

    def _evict(self, now: float) -> None:
        # Buckets that refilled completely carry no state worth keeping.
        full = [
            d
            for d, b in self._buckets.items()
            if b.tokens + (now - b.stamp) * self.rate >= self.burst
        ]
        for d in full:
            del self._buckets[d]
