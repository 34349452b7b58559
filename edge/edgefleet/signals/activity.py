"""Three-axis wrist accelerometer of a person who idles, walks, runs and sometimes falls."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from edgefleet.signals.base import Drift, Samples, apply_drift

ACTIVITIES = ("idle", "walk", "run", "fall")


class ActivitySignal:
    """Accelerometer in g at 50 Hz, in segments of one activity each.

    Per device (seed): sensor orientation, cadence, stride intensity and noise differ. Segments
    last a few seconds; a fall is a short impact followed by lying still with gravity rotated.
    ``label`` is the activity of the most recent sample read. ``mode`` drift mixes in a tremor
    (a 6 Hz oscillation) no training data had.
    """

    channels: tuple[str, ...] = ("ax", "ay", "az")

    def __init__(
        self,
        seed: int,
        rate_hz: float = 50.0,
        variation: float = 1.0,
        noise: float = 0.03,
        fall_rate: float = 0.1,
    ) -> None:
        rng = np.random.default_rng(seed)
        self.rate_hz = float(rate_hz)
        self._rng = np.random.default_rng(rng.integers(2**63))
        tilt = variation * rng.uniform(-0.4, 0.4, 2)
        self._gravity = np.array(
            [np.sin(tilt[0]), np.sin(tilt[1]) * np.cos(tilt[0]), np.cos(tilt[0]) * np.cos(tilt[1])],
            dtype=np.float32,
        )
        self._cadence = 1.0 + variation * rng.uniform(-0.15, 0.15)
        self._intensity = 1.0 + variation * rng.uniform(-0.2, 0.2)
        self._noise = noise
        self._fall_rate = fall_rate
        self._t = 0
        self._segment_left = 0
        self._activity = 0
        self._segment_t0 = 0
        self._drift: Drift | None = None

    @property
    def label(self) -> str:
        """The activity of the most recent sample."""
        return ACTIVITIES[self._activity]

    def set_drift(self, drift: Drift | None) -> None:
        """Apply (or remove) a drift from the next sample on."""
        self._drift = drift

    def _next_segment(self) -> None:
        weights = np.array([1.0, 1.0, 1.0, self._fall_rate * 3])
        self._activity = int(self._rng.choice(4, p=weights / weights.sum()))
        seconds = 2.0 if self._activity == 3 else self._rng.uniform(3.0, 8.0)
        self._segment_left = int(seconds * self.rate_hz)
        self._segment_t0 = self._t

    def read(self, n: int) -> Samples:
        """The next ``n`` samples, shape (n, 3), in g."""
        return self.read_labeled(n)[0]

    def read_labeled(self, n: int) -> tuple[Samples, npt.NDArray[np.int64]]:
        """The next ``n`` samples and the activity index of each."""
        out = np.empty((n, 3), dtype=np.float32)
        labels = np.empty(n, dtype=np.int64)
        i = 0
        while i < n:
            if self._segment_left == 0:
                self._next_segment()
            k = min(n - i, self._segment_left)
            out[i : i + k] = self._segment_samples(k)
            labels[i : i + k] = self._activity
            self._segment_left -= k
            self._t += k
            i += k
        if self._drift is not None and self._drift.kind == "mode":
            t = (self._t - n + np.arange(n)) / self.rate_hz
            out += (0.3 * self._drift.magnitude * np.sin(2 * np.pi * 6.0 * t))[:, None].astype(
                np.float32
            )
        return apply_drift(out, self._drift, self._gravity, scale=0.3), labels

    def _segment_samples(self, k: int) -> Samples:
        local = (self._t - self._segment_t0 + np.arange(k)) / self.rate_hz
        g = np.broadcast_to(self._gravity, (k, 3)).copy()
        act = self._activity
        if act in (1, 2):
            f = (1.8 if act == 1 else 2.8) * self._cadence
            amp = (0.35 if act == 1 else 1.1) * self._intensity
            w = 2 * np.pi * f * local
            g[:, 0] += amp * np.sin(w)
            g[:, 1] += 0.5 * amp * np.sin(2 * w + 0.7)
            g[:, 2] += 0.8 * amp * np.abs(np.sin(w))
        elif act == 3:
            impact = np.exp(-(((local - 0.4) / 0.08) ** 2)) * 3.0 * self._intensity
            lying = local > 0.5
            g[:, 2] = np.where(lying, 0.05, g[:, 2]) + impact
            g[:, 0] = np.where(lying, self._gravity[2], g[:, 0]) - 0.6 * impact
        x = g + self._rng.normal(0, self._noise, (k, 3))
        return x.astype(np.float32)
