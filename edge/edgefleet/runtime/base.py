"""The Runtime protocol, its typed error, and the int8 quantization helpers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from edgefleet.protocol.errors import EdgefleetError
from edgefleet.protocol.manifest import BundleManifest, QuantParams, TensorSpec

Array = npt.NDArray[np.generic]
FloatArray = npt.NDArray[np.float32]

DTYPES: dict[str, type[np.generic]] = {
    "float32": np.float32,
    "float16": np.float16,
    "int8": np.int8,
    "uint8": np.uint8,
    "int16": np.int16,
    "int32": np.int32,
    "int64": np.int64,
    "bool": np.bool_,
}


class RuntimeUnavailable(EdgefleetError):
    """No installed inference backend can load this model."""

    reason = "runtime-unavailable"
    exit_code = 3


class Runtime(Protocol):
    """A loaded model. Not thread-safe: one instance is only ever used by one thread at a time.

    ``run`` is the hot path: one float32 window in (the model's first input, batch of one),
    the first output out as float32, with any int8 (de)quantization done for the caller.
    """

    name: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    # The manifest's tensor specs, or (a bare model file) what the file says.
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def run(self, x: FloatArray) -> FloatArray:
        """Infer one input (shape ``input_shape``); the result may be reused by the next call."""
        ...

    def run_batch(self, x: FloatArray) -> FloatArray:
        """Infer ``n`` inputs stacked on axis 0; returns ``n`` outputs stacked on axis 0."""
        ...

    def run_feeds(self, feeds: dict[str, Array]) -> dict[str, Array]:
        """Run with named inputs and return every named output (golden vectors, tests)."""
        ...

    def resize(self, batch: int) -> None:
        """Make ``batch`` the batch size ``run`` serves (offline evaluation runs big batches)."""
        ...

    def close(self) -> None:
        """Release the model."""
        ...


# A manifest of None: a bare model file, its tensor specs read from the file.
RuntimeFactory = Callable[[Path, BundleManifest | None, int], Runtime]


def quantize(x: npt.ArrayLike, q: QuantParams, dtype: str = "int8") -> Array:
    """``round(x / scale) + zero_point``, clipped to ``dtype`` (per tensor or per ``q.axis``)."""
    info = np.iinfo(DTYPES[dtype])  # type: ignore[type-var]
    arr = np.asarray(x, dtype=np.float32)
    scale, zp = _params(q, arr.ndim)
    out = np.rint(arr / scale) + zp
    result: Array = np.clip(out, info.min, info.max).astype(DTYPES[dtype])
    return result


def dequantize(x: npt.ArrayLike, q: QuantParams) -> FloatArray:
    """``scale * (x - zero_point)`` as float32."""
    arr = np.asarray(x)
    scale, zp = _params(q, arr.ndim)
    return ((arr.astype(np.float32) - zp) * scale).astype(np.float32)


def _params(q: QuantParams, ndim: int) -> tuple[FloatArray, FloatArray]:
    scale = np.asarray(q.scale, dtype=np.float32)
    zp = np.asarray(q.zero_point, dtype=np.float32)
    if scale.size > 1 and ndim > 0:
        shape = [1] * ndim
        shape[q.axis] = scale.size
        return scale.reshape(shape), zp.reshape(shape)
    return scale.reshape(()), zp.reshape(())


def concrete_shape(spec: TensorSpec, batch: int = 1) -> tuple[int, ...]:
    """A spec's shape with free (-1) dimensions set to ``batch``."""
    return tuple(batch if d < 0 else d for d in spec.shape)


def spec_quant(spec: TensorSpec, detail: dict[str, object] | None = None) -> QuantParams | None:
    """Quantization of an integer tensor: the manifest's, else what the model file says."""
    if spec.quantization is not None or spec.dtype not in ("int8", "uint8", "int16"):
        return spec.quantization
    if detail:
        pair: tuple[float, int] = detail.get("quantization", (0.0, 0))  # type: ignore[assignment]
        if pair[0]:
            return QuantParams(scale=[float(pair[0])], zero_point=[int(pair[1])])
    return None
