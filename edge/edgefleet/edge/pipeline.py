"""Window, preprocess, infer and postprocess samples as a bundle's manifest describes.

The hot path does per chunk what can be done per chunk (channel selection, standardisation,
drift statistics) and per window only a slice, the runtime call and reading the answer: small
models invoke in microseconds, so every Python call per window counts (bench/edge_inference.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import msgspec
import numpy as np
import numpy.typing as npt

from edgefleet.edge.errors import Incompatible
from edgefleet.edge.runtime import FloatArray, Runtime
from edgefleet.edge.sketch import SketchAccumulator
from edgefleet.protocol.compat import check_fit, expected_input_shape
from edgefleet.protocol.manifest import BundleManifest
from edgefleet.protocol.messages import DeviceProfile

__all__ = ["Pipeline", "Result", "check_compatible", "expected_input_shape"]


class Result(NamedTuple):
    """One window's answer, before it gets a seq: time of its last sample, outputs, reading."""

    t: float
    outputs: list[float]
    label: str | None
    score: float | None
    latency_ms: float


def check_compatible(
    manifest: BundleManifest,
    source_channels: Sequence[str],
    profile: DeviceProfile | None = None,
    *,
    allow_task_change: bool = False,
) -> None:
    """Raise :class:`Incompatible` unless the bundle can run on this source and pipeline.

    The rule is :func:`edgefleet.protocol.compat.check_fit`, the one the cloud applies before
    it sends an assignment; ``profile`` adds what the device knows beyond its channels.
    """
    device = profile or DeviceProfile()
    device = msgspec.structs.replace(device, channels=list(source_channels))
    fit = check_fit(manifest, device, allow_task_change=allow_task_change)
    if not fit.ok:
        raise Incompatible(f"{manifest.ref} does not fit this device: {fit.describe()}")


class Pipeline:
    """Turns sample chunks into :class:`Result` rows for one loaded model; one thread at a time."""

    def __init__(
        self,
        runtime: Runtime,
        manifest: BundleManifest,
        source_channels: Sequence[str],
        *,
        bins: int = 10,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        check_compatible(manifest, source_channels)
        self.runtime = runtime
        self.manifest = manifest
        self.model = manifest.name
        self.model_version = manifest.version
        pre = manifest.preprocessing
        self.channels = list(pre.channels)
        idx = [list(source_channels).index(c) for c in pre.channels]
        # Identity selection is skipped: fancy indexing copies the chunk.
        self._idx: list[int] | None = None if idx == list(range(len(source_channels))) else idx
        width = len(idx)
        self.window = 1 if pre.kind == "none" else pre.window
        self.hop = pre.hop or self.window
        self._mean = np.asarray(pre.mean or [0.0] * width, dtype=np.float32)
        self._inv_std = (1.0 / np.asarray(pre.std or [1.0] * width, dtype=np.float32)).astype(
            np.float32
        )
        self._standardise = bool(pre.mean or pre.std)
        self._shape = (1, *expected_input_shape(manifest))
        self._tail = np.empty((0, width), dtype=np.float32)
        self._tail_t = 0.0
        post = manifest.postprocessing
        self._kind = post.kind
        self._threshold = post.threshold
        self._labels = list(manifest.labels)
        self._clock = clock
        self.windows = 0
        self.last_input: FloatArray | None = None
        edges: list[npt.NDArray[np.float64]] | None = None
        if pre.std and pre.mean:
            edges = [
                np.linspace(m - 4 * s, m + 4 * s, bins + 1)
                for m, s in zip(pre.mean, pre.std, strict=True)
            ]
        self.sketch = SketchAccumulator(self.channels, bins=bins, edges=edges)

    def process(self, t0: float, samples: FloatArray, rate_hz: float) -> list[Result]:
        """Feed one chunk (first sample at wall time ``t0``); return a result per full window."""
        data = samples if self._idx is None else samples[:, self._idx]
        self.sketch.add_inputs(data)
        if self._tail.shape[0]:
            start_t = self._tail_t
            data = np.concatenate((self._tail, data))
        else:
            start_t = t0
        if self._standardise:
            x = (data - self._mean) * self._inv_std
        else:
            x = np.ascontiguousarray(data, dtype=np.float32)
        n, window, hop, shape = x.shape[0], self.window, self.hop, self._shape
        run, clock = self.runtime.run, self._clock
        dt = 1.0 / rate_hz
        kind, labels, threshold = self._kind, self._labels, self._threshold
        out: list[Result] = []
        append = out.append
        start = 0
        while start + window <= n:
            xin = x[start : start + window].reshape(shape)
            c0 = clock()
            y = run(xin)
            latency = (clock() - c0) * 1000.0
            row = y[0]
            t = start_t + (start + window - 1) * dt
            if kind == "classify":
                k = int(row.argmax())
                score = float(row[k])
                label = labels[k] if labels and (threshold is None or score >= threshold) else None
                append(Result(t, row.tolist(), label, score, latency))
            elif kind == "anomaly":
                score = float(row[0])
                label = "anomaly" if threshold is not None and score > threshold else "normal"
                append(Result(t, row.tolist(), label, score, latency))
            else:
                append(Result(t, row.tolist(), None, None, latency))
            start += hop
        if out:
            self.last_input = xin
            self.windows += len(out)
            self.sketch.add_scores([r.score for r in out if r.score is not None])
        keep = data[min(start, n) :]
        self._tail = np.array(keep, dtype=np.float32, copy=True)
        self._tail_t = start_t + min(start, n) * dt
        return out
