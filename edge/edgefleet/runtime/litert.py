"""LiteRT backend: ``ai_edge_litert``, else ``tflite_runtime``, else ``tensorflow.lite``.

The import is tried in that order through importlib, so a device with LiteRT never loads
TensorFlow (hundreds of MB). The hot path calls the interpreter's native methods directly
when they are there, because the Python wrappers add a few microseconds per call and a small
model's whole invoke takes about as long.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, cast

import numpy as np

from edgefleet.protocol.manifest import BundleManifest, DType, QuantParams, TensorSpec
from edgefleet.runtime.base import (
    Array,
    FloatArray,
    RuntimeUnavailable,
    dequantize,
    quantize,
    spec_quant,
)

CANDIDATES = (
    ("ai_edge_litert.interpreter", "Interpreter"),
    ("tflite_runtime.interpreter", "Interpreter"),
    ("tensorflow.lite", "Interpreter"),
)


def interpreter_class() -> Any:
    """The first LiteRT ``Interpreter`` class that imports, in :data:`CANDIDATES` order."""
    errors = []
    for module, attr in CANDIDATES:
        try:
            return getattr(importlib.import_module(module), attr)
        except ImportError as exc:
            errors.append(f"{module}: {exc}")
    raise RuntimeUnavailable(
        "no LiteRT runtime is installed: pip install ai-edge-litert (" + "; ".join(errors) + ")"
    )


class LiteRtRuntime:
    """A ``.tflite`` model in one LiteRT interpreter."""

    name = "litert"

    def __init__(self, path: Path, manifest: BundleManifest | None, threads: int = 1) -> None:
        cls = interpreter_class()
        # Which of the CANDIDATES serves the model: the agent's log names it.
        self.backend = cls.__module__
        try:
            self._interp = cls(model_path=str(path), num_threads=threads)
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise RuntimeUnavailable(f"LiteRT cannot load {path.name}: {exc}") from None
        self._ins = self._interp.get_input_details()
        self._outs = self._interp.get_output_details()
        if manifest is None:
            self.inputs = [_detail_spec(d) for d in self._ins]
            self.outputs = [_detail_spec(d) for d in self._outs]
        else:
            self.inputs, self.outputs = list(manifest.inputs), list(manifest.outputs)
        self._in_index = int(self._ins[0]["index"])
        self._out_index = int(self._outs[0]["index"])
        self.input_shape = tuple(int(d) for d in self._ins[0]["shape"])
        self.output_shape = tuple(int(d) for d in self._outs[0]["shape"])
        in_dtype = np.dtype(self._ins[0]["dtype"])
        out_dtype = np.dtype(self._outs[0]["dtype"])
        self._in_q: QuantParams | None = None
        self._out_q: QuantParams | None = None
        if in_dtype.kind in "iu":
            self._in_q = spec_quant(self.inputs[0], self._ins[0])
        if out_dtype.kind in "iu":
            self._out_q = spec_quant(self.outputs[0], self._outs[0])
        self._in_dtype = in_dtype.name
        native = getattr(self._interp, "_interpreter", None)
        # The native methods skip the wrappers' checks. No reference to the native object may
        # outlive a call: LiteRT counts references to it to decide whether resizing is safe.
        self._native = native is not None and all(
            hasattr(native, m) for m in ("SetTensor", "Invoke", "GetTensor")
        )

    def run(self, x: FloatArray) -> FloatArray:
        """Infer one window."""
        feed: Array = x if self._in_q is None else quantize(x, self._in_q, self._in_dtype)
        if self._native:
            native = self._interp._interpreter
            native.SetTensor(self._in_index, feed)
            native.Invoke()
            y = native.GetTensor(self._out_index, 0)
        else:  # pragma: no cover - other LiteRT builds
            interp = self._interp
            interp.set_tensor(self._in_index, feed)
            interp.invoke()
            y = interp.get_tensor(self._out_index)
        return y if self._out_q is None else dequantize(y, self._out_q)

    def run_batch(self, x: FloatArray) -> FloatArray:
        """Infer a stack of windows, then return the input to the one-window serving shape."""
        n = int(x.shape[0])
        if n == self.input_shape[0]:
            return np.array(self.run(x), copy=True)
        self._interp.resize_tensor_input(self._in_index, [n, *self.input_shape[1:]])
        self._interp.allocate_tensors()
        try:
            return np.array(self.run(x), copy=True)
        finally:
            self._interp.resize_tensor_input(self._in_index, list(self.input_shape))
            self._interp.allocate_tensors()

    def run_feeds(self, feeds: dict[str, Array]) -> dict[str, Array]:
        """Named inputs in, named outputs out; names are the manifest's, matched by position."""
        for spec, detail in zip(self.inputs, self._ins, strict=False):
            value = np.asarray(feeds[spec.name])
            index = int(detail["index"])
            if list(value.shape) != [int(d) for d in detail["shape"]]:
                self._interp.resize_tensor_input(index, list(value.shape))
                self._interp.allocate_tensors()
            dtype = np.dtype(detail["dtype"])
            q = _detail_quant(detail)
            if dtype.kind in "iu" and value.dtype.kind == "f" and q is not None:
                value = quantize(value, q, dtype.name)
            self._interp.set_tensor(index, value.astype(dtype))
        self._interp.invoke()
        out: dict[str, Array] = {}
        for spec, detail in zip(self.outputs, self._outs, strict=False):
            y = self._interp.get_tensor(int(detail["index"]))
            q = _detail_quant(detail)
            if np.dtype(detail["dtype"]).kind in "iu" and q is not None:
                y = dequantize(y, q)
            out[spec.name] = y
        # Back to the serving shape, so the hot path never resizes.
        for detail in self._ins:
            self._interp.resize_tensor_input(int(detail["index"]), list(detail["shape"]))
        self._interp.allocate_tensors()
        return out

    def resize(self, batch: int) -> None:
        """Serve ``batch`` windows per ``run`` from now on (one reallocation, not one per call)."""
        self._interp.resize_tensor_input(self._in_index, [batch, *self.input_shape[1:]])
        self._interp.allocate_tensors()
        self._ins = self._interp.get_input_details()
        self._outs = self._interp.get_output_details()
        self.input_shape = tuple(int(d) for d in self._ins[0]["shape"])
        self.output_shape = tuple(int(d) for d in self._outs[0]["shape"])

    def close(self) -> None:
        """Drop the interpreter."""
        self._interp = None


def _detail_quant(detail: dict[str, Any]) -> QuantParams | None:
    scale, zp = detail.get("quantization", (0.0, 0))
    return QuantParams(scale=[float(scale)], zero_point=[int(zp)]) if scale else None


def _detail_spec(detail: dict[str, Any]) -> TensorSpec:
    """A tensor's spec as the model file states it (a bare file has no manifest yet)."""
    dtype = np.dtype(detail["dtype"])
    return TensorSpec(
        name=str(detail["name"]),
        dtype=cast(DType, dtype.name),
        shape=[int(d) for d in detail["shape"]],
        quantization=_detail_quant(detail) if dtype.kind in "iu" else None,
    )
