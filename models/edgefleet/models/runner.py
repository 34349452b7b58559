"""The inference seam: load a converted model with its device runtime (never TensorFlow)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from edgefleet.models.base import Array
from edgefleet.models.errors import UnsupportedVariant


class Runner(Protocol):
    """One loaded model: float32 batch in, float32 batch out, whatever its tensors' dtypes."""

    input_name: str
    output_name: str

    def run(self, x: Array) -> Array:
        """Outputs for a batch ``x`` (the leading dimension is the batch)."""
        ...


def _litert(path: Path, threads: int) -> Runner:
    from edgefleet.models.runner_litert import LiteRTRunner

    return LiteRTRunner(path, threads=threads)


def _onnx(path: Path, threads: int) -> Runner:
    from edgefleet.models.runner_onnx import OnnxRunner

    return OnnxRunner(path, threads=threads)


RUNNERS: dict[str, Callable[[Path, int], Runner]] = {"litert": _litert, "onnx": _onnx}


def load_runner(runtime: str, path: Path, threads: int = 1) -> Runner:
    """Load ``path`` with the runtime named in a manifest (``litert`` or ``onnx``)."""
    try:
        factory = RUNNERS[runtime]
    except KeyError:
        raise UnsupportedVariant(
            f"unknown runtime {runtime!r}; use one of {sorted(RUNNERS)}"
        ) from None
    return factory(Path(path), threads)
