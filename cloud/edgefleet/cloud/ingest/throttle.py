"""Per-device token buckets: a flooding device is slowed down without touching the others."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float
    dropped: int = 0
    last_report: float = -1e18


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
