"""The zoo's view of the one inference seam (``edgefleet.runtime``), as the device runs a model.

A converted model is run here by the same backends the agent serves it with, so parity, golden
vectors and benchmarks measure the device's code (docs/decisions/0008-one-runtime-seam.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from edgefleet.models.base import Array
from edgefleet.models.errors import UnsupportedVariant
from edgefleet.protocol.manifest import TensorSpec
from edgefleet.runtime import RUNTIMES, Runtime, open_model


class Runner(Protocol):
    """One loaded model: float32 batch in, float32 batch out, whatever its tensors' dtypes."""

    input_name: str
    output_name: str

    def run(self, x: Array) -> Array:
        """Outputs for a batch ``x`` (the leading dimension is the batch)."""
        ...


class SeamRunner:
    """A :class:`Runner` over a seam runtime, which serves whatever batch size it was last given."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.input_spec: TensorSpec = runtime.inputs[0]
        self.output_spec: TensorSpec = runtime.outputs[0]
        self.input_name = self.input_spec.name
        self.output_name = self.output_spec.name

    def run(self, x: Array) -> Array:
        """Outputs for the batch ``x``, resizing the runtime when the batch changes."""
        rt = self.runtime
        if x.shape[0] != rt.input_shape[0]:
            rt.resize(int(x.shape[0]))
        # A copy: the runtime may reuse its output buffer on the next call.
        return np.array(rt.run(x), dtype=np.float32)


def load_runner(runtime: str, path: Path, threads: int = 1) -> SeamRunner:
    """Load ``path`` with the runtime named in a manifest (``litert`` or ``onnx``)."""
    if runtime not in RUNTIMES:
        raise UnsupportedVariant(f"unknown runtime {runtime!r}; use one of {sorted(RUNTIMES)}")
    return SeamRunner(open_model(runtime, Path(path), threads=threads))
