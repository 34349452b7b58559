"""ONNX Runtime backend of the inference seam (CPU execution provider)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgefleet.models.base import Array


class OnnxRunner:
    """An ``.onnx`` model in an ONNX Runtime session with a fixed thread count."""

    def __init__(self, path: Path, threads: int = 1) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self._sess = ort.InferenceSession(
            str(path), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        self.input_name: str = self._sess.get_inputs()[0].name
        self.output_name: str = self._sess.get_outputs()[0].name

    def run(self, x: Array) -> Array:
        """Outputs for the batch ``x``."""
        (y,) = self._sess.run([self.output_name], {self.input_name: x})
        return np.asarray(y, dtype=np.float32)
