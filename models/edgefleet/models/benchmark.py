"""Latency of a converted model as the device runtime runs it (no TensorFlow)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from edgefleet.models.base import Array
from edgefleet.models.runner import Runner


@dataclass(frozen=True, slots=True)
class Latency:
    """Wall-clock microseconds per call of ``runner.run`` on one batch."""

    batch: int
    runs: int
    p50_us: float
    p95_us: float
    mean_us: float

    @property
    def per_sample_us(self) -> float:
        """Median microseconds per sample (p50 divided by the batch)."""
        return self.p50_us / self.batch


def measure(runner: Runner, x: Array, *, runs: int = 300, warmup: int = 20) -> Latency:
    """Time ``runs`` calls on the batch ``x`` after ``warmup`` untimed ones."""
    if runs <= 0:
        raise ValueError("runs must be positive")
    for _ in range(warmup):
        runner.run(x)
    times = np.empty(runs)
    for i in range(runs):
        t0 = time.perf_counter_ns()
        runner.run(x)
        times[i] = time.perf_counter_ns() - t0
    us = times / 1000.0
    return Latency(
        batch=int(x.shape[0]),
        runs=runs,
        p50_us=float(np.percentile(us, 50)),
        p95_us=float(np.percentile(us, 95)),
        mean_us=float(us.mean()),
    )


def sample_batch(shape: list[int], batch: int, seed: int = 0) -> Array:
    """A random standard-normal float32 batch of a manifest input shape (-1 is the batch)."""
    dims = [batch, *[d for d in shape[1:]]]
    return np.random.default_rng(seed).normal(size=dims).astype(np.float32)
