"""LiteRT (``ai_edge_litert``) backend of the inference seam, as the device runs it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.models.base import Array


class LiteRTRunner:
    """A ``.tflite`` model in a LiteRT interpreter; int8 I/O is (de)quantized in numpy."""

    def __init__(self, path: Path, threads: int = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self._interp = Interpreter(model_path=str(path), num_threads=threads)
        self._interp.allocate_tensors()
        self._in: dict[str, Any] = self._interp.get_input_details()[0]
        self._out: dict[str, Any] = self._interp.get_output_details()[0]
        self.input_name: str = self._in["name"]
        self.output_name: str = self._out["name"]
        self._batch = int(self._in["shape"][0])

    @property
    def input_details(self) -> dict[str, Any]:
        """LiteRT's description of the input tensor (dtype, shape, quantization)."""
        return self._in

    @property
    def output_details(self) -> dict[str, Any]:
        """LiteRT's description of the output tensor."""
        return self._out

    def _resize(self, batch: int) -> None:
        shape = [batch, *[int(d) for d in self._in["shape"][1:]]]
        self._interp.resize_tensor_input(self._in["index"], shape)
        self._interp.allocate_tensors()
        self._out = self._interp.get_output_details()[0]
        self._batch = batch

    def run(self, x: Array) -> Array:
        """Outputs for the batch ``x``, resizing the interpreter when the batch changes."""
        if x.shape[0] != self._batch:
            self._resize(int(x.shape[0]))
        dtype = self._in["dtype"]
        if dtype != np.float32:
            scale, zero = self._in["quantization"]
            info = np.iinfo(dtype)
            x = np.clip(np.round(x / scale) + zero, info.min, info.max).astype(dtype)
        self._interp.set_tensor(self._in["index"], x)
        self._interp.invoke()
        y: Array = self._interp.get_tensor(self._out["index"])
        if y.dtype != np.float32:
            scale, zero = self._out["quantization"]
            out: Array = ((y.astype(np.float32) - zero) * scale).astype(np.float32)
            return out
        return np.array(y, dtype=np.float32)
