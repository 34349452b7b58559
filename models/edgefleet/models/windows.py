"""Sliding windows and per-channel standardisation, exactly as the agent computes them."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from edgefleet.models.base import Array


def sliding_windows(samples: Array, window: int, hop: int) -> Array:
    """Windows of ``window`` samples every ``hop`` samples: shape (n, window, channels)."""
    if window <= 0 or hop <= 0:
        raise ValueError("window and hop must be positive")
    n = 0 if len(samples) < window else 1 + (len(samples) - window) // hop
    idx = np.arange(window)[None, :] + hop * np.arange(n)[:, None]
    return np.ascontiguousarray(samples[idx], dtype=np.float32)


def pure_windows(
    samples: Array, labels: npt.NDArray[np.int64], window: int, hop: int
) -> tuple[Array, npt.NDArray[np.int64]]:
    """Windows whose samples all carry one label, with that label (segment edges are dropped)."""
    wins = sliding_windows(samples, window, hop)
    labs = sliding_windows(labels[:, None].astype(np.float32), window, hop)[..., 0]
    keep = (labs == labs[:, :1]).all(axis=1)
    return wins[keep], labs[keep, 0].astype(np.int64)


def channel_stats(windows: Array) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation over every sample of every window."""
    flat = windows.reshape(-1, windows.shape[-1]).astype(np.float64)
    std = np.maximum(flat.std(axis=0), 1e-6)
    return [float(v) for v in flat.mean(axis=0)], [float(v) for v in std]


def standardize(windows: Array, mean: list[float], std: list[float]) -> Array:
    """``(x - mean) / std`` per channel, in float32 like the agent."""
    m = np.asarray(mean, dtype=np.float32)
    s = np.asarray(std, dtype=np.float32)
    return ((windows - m) / s).astype(np.float32)
