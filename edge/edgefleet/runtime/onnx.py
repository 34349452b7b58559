"""ONNX Runtime backend, on the CPU execution provider with a bounded thread count."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import numpy as np

from edgefleet.protocol.manifest import BundleManifest, DType, TensorSpec
from edgefleet.runtime.base import (
    DTYPES,
    Array,
    FloatArray,
    RuntimeUnavailable,
    concrete_shape,
    dequantize,
    quantize,
    spec_quant,
)

# ONNX tensor type names of the dtypes a manifest can state.
_ONNX_TYPES = {f"tensor({'float' if n == 'float32' else n})": n for n in DTYPES}


class OnnxRuntime:
    """A ``.onnx`` model in one ONNX Runtime inference session."""

    name = "onnx"

    def __init__(self, path: Path, manifest: BundleManifest | None, threads: int = 1) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise RuntimeUnavailable(
                f"ONNX Runtime is not installed: pip install onnxruntime ({exc})"
            ) from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self._session: Any = ort.InferenceSession(
                str(path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors on bad files
            raise RuntimeUnavailable(f"ONNX Runtime cannot load {path.name}: {exc}") from None
        # What the agent's log names as the backend serving the model.
        self.backend = f"onnxruntime {ort.__version__}, CPUExecutionProvider"
        ins, outs = self._session.get_inputs(), self._session.get_outputs()
        if manifest is None:
            self.inputs = [_arg_spec(i) for i in ins]
            self.outputs = [_arg_spec(o) for o in outs]
        else:
            self.inputs, self.outputs = list(manifest.inputs), list(manifest.outputs)
        self._in_names = [i.name for i in ins]
        self._out_names = [o.name for o in outs]
        self._in_name = self._in_names[0]
        self._first_out = [self._out_names[0]]
        spec_in, spec_out = self.inputs[0], self.outputs[0]
        self.input_shape = concrete_shape(spec_in)
        self.output_shape = concrete_shape(spec_out)
        self._in_q = spec_quant(spec_in) if spec_in.dtype in ("int8", "uint8") else None
        self._out_q = spec_quant(spec_out) if spec_out.dtype in ("int8", "uint8") else None
        self._in_dtype = spec_in.dtype
        self._feed: dict[str, Any] = {}
        self._run = self._session.run

    def run(self, x: FloatArray) -> FloatArray:
        """Infer one window."""
        feed = self._feed
        feed[self._in_name] = x if self._in_q is None else quantize(x, self._in_q, self._in_dtype)
        y = self._run(self._first_out, feed)[0]
        return y if self._out_q is None else dequantize(y, self._out_q)

    def run_batch(self, x: FloatArray) -> FloatArray:
        """Infer a stack of windows (the model's batch dimension must be free)."""
        return self.run(x)

    def run_feeds(self, feeds: dict[str, Array]) -> dict[str, Array]:
        """Named inputs in, named outputs out; names are the manifest's, matched by position."""
        feed = {}
        for spec, name in zip(self.inputs, self._in_names, strict=False):
            value = np.asarray(feeds[spec.name])
            q = spec_quant(spec)
            if spec.dtype in ("int8", "uint8") and value.dtype.kind == "f" and q is not None:
                value = quantize(value, q, spec.dtype)
            feed[name] = value.astype(DTYPES[spec.dtype])
        ys = self._session.run(self._out_names, feed)
        out: dict[str, Array] = {}
        for spec, y in zip(self.outputs, ys, strict=False):
            q = spec_quant(spec)
            out[spec.name] = dequantize(y, q) if q is not None and spec.dtype != "float32" else y
        return out

    def resize(self, batch: int) -> None:
        """Serve ``batch`` windows per ``run`` (the session takes any batch; the shapes say so)."""
        self.input_shape = concrete_shape(self.inputs[0], batch)
        self.output_shape = concrete_shape(self.outputs[0], batch)

    def close(self) -> None:
        """Drop the session."""
        self._session = None


def _arg_spec(arg: Any) -> TensorSpec:
    """A session input's or output's spec as the file states it; symbolic dimensions are free."""
    dtype = _ONNX_TYPES.get(arg.type)
    if dtype is None:
        raise RuntimeUnavailable(
            f"ONNX tensor {arg.name!r} has type {arg.type}, which no manifest can state"
        )
    shape = [d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape]
    return TensorSpec(name=arg.name, dtype=cast(DType, dtype), shape=shape)
