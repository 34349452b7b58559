"""Cheap running statistics and histograms of model inputs and scores, for drift sketches.

This runs on the inference hot path for every chunk. A chunk is only copied into a buffer
there; the buffer is counted when it fills or a sketch is taken, all channels together in a
few numpy calls. Counting each chunk per channel with ``np.histogram`` cost about 35 µs a
call, more than the rest of the agent's work per window (bench/edge_inference.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from edgefleet.protocol.messages import FeatureSketch

F64 = npt.NDArray[np.float64]


def uniform_counts(x: F64, edges: F64) -> npt.NDArray[np.int64]:
    """Histogram counts of each column of ``x`` (n, c) over its row of uniform ``edges``.

    Values outside the edges count in the first or last bin; NaN counts nowhere. The counts
    equal ``np.histogram(np.clip(x[:, j], lo, hi), edges[j])``: this is numpy's own algorithm
    for uniform bins (index by arithmetic, then correct against the edges), for all columns
    at once.
    """
    c = x.shape[1]
    bins = edges.shape[1] - 1
    lo, hi = edges[:, 0], edges[:, -1]
    v = np.clip(x, lo, hi)
    nan = np.isnan(v)
    if nan.any():
        v = np.where(nan, lo, v)
    idx = ((v - lo) * (bins / (hi - lo))).astype(np.intp)
    np.minimum(idx, bins - 1, out=idx)
    flat = edges.ravel()
    row = np.arange(c, dtype=np.intp) * (bins + 1)
    idx -= v < flat[idx + row]
    idx += (v >= flat[idx + row + 1]) & (idx != bins - 1)
    keys = idx + np.arange(c, dtype=np.intp) * bins
    counts = np.bincount(keys[~nan] if nan.any() else keys.ravel(), minlength=c * bins)
    return counts.reshape(c, bins).astype(np.int64, copy=False)


class _Columns:
    """Count, sums, min, max and a fixed-edge histogram of each of ``names`` (one per column)."""

    def __init__(self, names: Sequence[str], edges: F64 | None, bins: int, buffer: int) -> None:
        self.names = list(names)
        self.bins = bins
        c = len(self.names)
        self.edges = edges
        self.counts = np.zeros((c, bins), dtype=np.int64)
        self.n = 0
        self.s1 = np.zeros(c)
        self.s2 = np.zeros(c)
        self.min = np.full(c, np.inf)
        self.max = np.full(c, -np.inf)
        self._max_buffer = buffer
        self._buf: F64 | None = None
        self._fill = 0

    def add(self, x: npt.NDArray[np.floating]) -> None:
        """Buffer rows (n, c); count them once the buffer is full."""
        rows = x.shape[0]
        if self._buf is None:
            # Eight chunks' worth: enough to share the counting's fixed cost, and small for a
            # simulator holding thousands of agents that read a few samples at a time.
            size = min(max(8 * rows, 64), self._max_buffer)
            self._buf = np.empty((size, len(self.names)))
        if self._fill + rows > self._buf.shape[0]:
            self.flush()
            if rows > self._buf.shape[0]:
                self._count(x.astype(np.float64, copy=False))
                return
        self._buf[self._fill : self._fill + rows] = x
        self._fill += rows

    def flush(self) -> None:
        """Count what the buffer holds."""
        if self._fill and self._buf is not None:
            self._count(self._buf[: self._fill])
            self._fill = 0

    def _count(self, v: F64) -> None:
        mn, mx = v.min(axis=0), v.max(axis=0)
        self.n += int(v.shape[0])
        self.s1 += v.sum(axis=0)
        self.s2 += np.einsum("ij,ij->j", v, v)
        np.minimum(self.min, mn, out=self.min)
        np.maximum(self.max, mx, out=self.max)
        if self.edges is None:
            # No manifest statistics: fix the edges from the first data counted, with margin.
            pad = (mx - mn) * 0.5
            pad[pad == 0] = 1.0
            self.edges = np.linspace(mn - pad, mx + pad, self.bins + 1, axis=1)
        self.counts += uniform_counts(v, self.edges)

    def sketches(self) -> list[FeatureSketch]:
        self.flush()
        if not self.n:
            return []
        mean = self.s1 / self.n
        std = np.sqrt(np.maximum(self.s2 / self.n - mean * mean, 0.0))
        edges = self.edges if self.edges is not None else np.zeros((len(self.names), 0))
        return [
            FeatureSketch(
                name=name,
                count=self.n,
                mean=float(mean[j]),
                std=float(std[j]),
                min=float(self.min[j]),
                max=float(self.max[j]),
                bin_edges=[float(e) for e in edges[j]],
                counts=[int(k) for k in self.counts[j]],
            )
            for j, name in enumerate(self.names)
        ]


class SketchAccumulator:
    """Per-channel input statistics plus the model score, reset each time a sketch is taken."""

    def __init__(
        self,
        channels: Sequence[str],
        *,
        bins: int = 10,
        edges: Sequence[F64] | None = None,
        buffer: int = 4096,
    ) -> None:
        self._channels = list(channels)
        self._bins = bins
        self._buffer = buffer
        self._edges = None if edges is None else np.stack([np.asarray(e, float) for e in edges])
        self._score_edges = np.linspace(0.0, 1.0, bins + 1).reshape(1, -1)
        self.reset()

    def reset(self) -> None:
        """Start a new sketch window."""
        edges = None if self._edges is None else self._edges.copy()
        self._feats = _Columns(self._channels, edges, self._bins, self._buffer)
        self._score = _Columns(["score"], self._score_edges, self._bins, self._buffer)

    def add_inputs(self, data: npt.NDArray[np.float32]) -> None:
        """Add a chunk of samples (n, channels)."""
        self._feats.add(data)

    def add_scores(self, scores: Sequence[float]) -> None:
        """Add model scores (confidence or anomaly score)."""
        if scores:
            self._score.add(np.asarray(scores, dtype=np.float64).reshape(-1, 1))

    def take(self) -> list[FeatureSketch]:
        """The sketches since the last take, then reset."""
        out = self._feats.sketches() + self._score.sketches()
        self.reset()
        return out
