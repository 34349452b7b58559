"""Window, preprocess, infer and postprocess samples as a bundle's manifest describes.

The hot path does per chunk what can be done per chunk (channel selection, standardisation,
drift statistics) and per window only a slice, the runtime call and reading the answer: small
models invoke in microseconds, so every Python call per window counts (bench/edge_inference.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from edgefleet.edge.errors import Incompatible
from edgefleet.edge.runtime.base import FloatArray, Runtime
from edgefleet.edge.sketch import SketchAccumulator
from edgefleet.protocol.manifest import BundleManifest, TensorSpec


class Result(NamedTuple):
    """One window's answer, before it gets a seq: time of its last sample, outputs, reading."""

    t: float
    outputs: list[float]
    label: str | None
    score: float | None
    latency_ms: float


def expected_input_shape(manifest: BundleManifest) -> list[int]:
    """The input shape (without batch) the manifest's preprocessing produces."""
    pre = manifest.preprocessing
    width = len(pre.channels)
    if pre.kind == "window":
        return [pre.window, width]
    if pre.kind == "flatten":
        return [pre.window * width]
    return [width]


def check_compatible(manifest: BundleManifest, source_channels: Sequence[str]) -> None:
    """Raise :class:`Incompatible` unless the bundle can run on this source and pipeline."""
    pre, post = manifest.preprocessing, manifest.postprocessing
    if not pre.channels:
        raise Incompatible(f"{manifest.ref}: preprocessing lists no channels")
    missing = [c for c in pre.channels if c not in source_channels]
    if missing:
        raise Incompatible(
            f"{manifest.ref} needs channels {missing} that this device's source does not have "
            f"(it has {list(source_channels)})"
        )
    if pre.kind != "none" and pre.window <= 0:
        raise Incompatible(f"{manifest.ref}: preprocessing.window must be positive")
    for what, values in (("mean", pre.mean), ("std", pre.std)):
        if values and len(values) != len(pre.channels):
            raise Incompatible(f"{manifest.ref}: preprocessing.{what} needs one value per channel")
    if any(s == 0 for s in pre.std):
        raise Incompatible(f"{manifest.ref}: preprocessing.std holds a zero")
    spec: TensorSpec = manifest.inputs[0]
    want = expected_input_shape(manifest)
    if [d for d in spec.shape[1:]] != want:
        raise Incompatible(
            f"{manifest.ref}: input {spec.name!r} has shape {spec.shape}, but a "
            f"{pre.kind} of {pre.window} x {len(pre.channels)} channels gives [-1, "
            + ", ".join(map(str, want))
            + "]"
        )
    if spec.dtype not in ("float32", "int8", "uint8"):
        raise Incompatible(f"{manifest.ref}: input dtype {spec.dtype} is not supported")
    if spec.dtype != "float32" and spec.quantization is None:
        raise Incompatible(f"{manifest.ref}: integer input {spec.name!r} has no quantization")
    out = manifest.outputs[0]
    if post.kind == "classify" and manifest.labels and out.shape[-1] != len(manifest.labels):
        raise Incompatible(
            f"{manifest.ref}: {len(manifest.labels)} labels for an output of shape {out.shape}"
        )


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
