"""Cheap running statistics and histograms of model inputs and scores, for drift sketches."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from edgefleet.protocol.messages import FeatureSketch


class _Running:
    """Count, mean, variance (by sums), min, max and a fixed-edge histogram of one feature."""

    __slots__ = ("counts", "edges", "max", "min", "n", "name", "s1", "s2")

    def __init__(self, name: str, edges: npt.NDArray[np.float64] | None) -> None:
        self.name = name
        self.edges = edges
        self.counts = np.zeros(0 if edges is None else len(edges) - 1, dtype=np.int64)
        self.n = 0
        self.s1 = self.s2 = 0.0
        self.min, self.max = float("inf"), float("-inf")

    def add(self, v: npt.NDArray[np.floating], bins: int) -> None:
        if v.size == 0:
            return
        v64 = v.astype(np.float64, copy=False)
        self.n += int(v.size)
        self.s1 += float(v64.sum())
        self.s2 += float(np.dot(v64, v64))
        self.min = min(self.min, float(v64.min()))
        self.max = max(self.max, float(v64.max()))
        if self.edges is None:
            # No manifest statistics: fix the edges from the first data seen, with margin.
            lo, hi = float(v64.min()), float(v64.max())
            pad = (hi - lo) * 0.5 or 1.0
            self.edges = np.linspace(lo - pad, hi + pad, bins + 1)
            self.counts = np.zeros(bins, dtype=np.int64)
        clipped = np.clip(v64, self.edges[0], self.edges[-1])
        self.counts += np.histogram(clipped, bins=self.edges)[0]

    def sketch(self) -> FeatureSketch:
        mean = self.s1 / self.n if self.n else 0.0
        var = max(self.s2 / self.n - mean * mean, 0.0) if self.n else 0.0
        return FeatureSketch(
            name=self.name,
            count=self.n,
            mean=mean,
            std=var**0.5,
            min=self.min if self.n else 0.0,
            max=self.max if self.n else 0.0,
            bin_edges=[] if self.edges is None else [float(e) for e in self.edges],
            counts=[] if self.edges is None else [int(c) for c in self.counts],
        )


class SketchAccumulator:
    """Per-channel input statistics plus the model score, reset each time a sketch is taken."""

    def __init__(
        self,
        channels: Sequence[str],
        *,
        bins: int = 10,
        edges: Sequence[npt.NDArray[np.float64]] | None = None,
    ) -> None:
        self._channels = list(channels)
        self._bins = bins
        self._edges = list(edges) if edges is not None else None
        self._score_edges = np.linspace(0.0, 1.0, bins + 1)
        self.reset()

    def reset(self) -> None:
        """Start a new sketch window."""
        self._feats = [
            _Running(c, None if self._edges is None else self._edges[i])
            for i, c in enumerate(self._channels)
        ]
        self._score = _Running("score", self._score_edges)

    def add_inputs(self, data: npt.NDArray[np.float32]) -> None:
        """Add a chunk of samples (n, channels)."""
        for i, f in enumerate(self._feats):
            f.add(data[:, i], self._bins)

    def add_scores(self, scores: Sequence[float]) -> None:
        """Add model scores (confidence or anomaly score)."""
        if scores:
            self._score.add(np.asarray(scores, dtype=np.float64), self._bins)

    def take(self) -> list[FeatureSketch]:
        """The sketches since the last take, then reset."""
        out = [f.sketch() for f in (*self._feats, self._score) if f.n]
        self.reset()
        return out
