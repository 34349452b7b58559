"""Three-axis vibration of a rotating machine: shaft harmonics, structural noise, faults."""

from __future__ import annotations

import numpy as np

from edgefleet.signals.base import Drift, Samples, apply_drift


class VibrationSignal:
    """Accelerometer on a motor housing, in g.

    Each device (seed) gets its own shaft speed (20-30 Hz), harmonic amplitudes, axis gains and
    noise floor, the way two nominally identical pumps differ. ``mode`` drift adds a bearing
    fault: amplitude-modulated high-frequency bursts at a non-harmonic defect frequency.
    """

    channels: tuple[str, ...] = ("ax", "ay", "az")

    def __init__(
        self, seed: int, rate_hz: float = 400.0, variation: float = 1.0, noise: float = 0.02
    ) -> None:
        rng = np.random.default_rng(seed)
        self.rate_hz = float(rate_hz)
        self._rng = np.random.default_rng(rng.integers(2**63))
        self._shaft_hz = 25.0 + variation * rng.uniform(-5.0, 5.0)
        self._harmonics = np.array([1.0, 0.45, 0.2]) * (1 + variation * rng.uniform(-0.2, 0.2, 3))
        self._phase = rng.uniform(0, 2 * np.pi, (3, 3))
        self._gain = (1 + variation * rng.uniform(-0.15, 0.15, 3)).astype(np.float32)
        self._noise = noise * (1 + variation * rng.uniform(-0.3, 0.3))
        self._baseline = np.array([0.0, 0.0, 1.0], dtype=np.float32)  # gravity on z
        self._defect_hz = self._shaft_hz * 3.57  # outer-race defect: not a shaft harmonic
        self._t = 0
        self._drift: Drift | None = None

    def set_drift(self, drift: Drift | None) -> None:
        """Apply (or remove) a drift from the next sample on."""
        self._drift = drift

    def read(self, n: int) -> Samples:
        """The next ``n`` samples, shape (n, 3), in g."""
        t = (self._t + np.arange(n)) / self.rate_hz
        self._t += n
        w = 2 * np.pi * self._shaft_hz * t
        x = np.empty((n, 3), dtype=np.float32)
        for axis in range(3):
            sig = sum(
                a * np.sin((k + 1) * w + self._phase[axis, k])
                for k, a in enumerate(self._harmonics)
            )
            x[:, axis] = 0.1 * sig * self._gain[axis]
        x += self._baseline
        x += self._rng.normal(0.0, self._noise, (n, 3)).astype(np.float32)
        if self._drift is not None and self._drift.kind == "mode":
            envelope = 0.5 * (1 + np.sin(2 * np.pi * self._defect_hz * t))
            burst = envelope * np.sin(2 * np.pi * 0.23 * self.rate_hz * t)
            x += (0.08 * self._drift.magnitude * burst)[:, None].astype(np.float32)
        return apply_drift(x, self._drift, self._baseline, scale=0.1)
