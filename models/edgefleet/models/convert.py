"""Keras to LiteRT (float32, float16, dynamic range, full int8) and to ONNX (+ ORT quantization).

Paths verified on TensorFlow 2.21 / Keras 3: TFLite from a SavedModel written by
``model.export(format="tf_saved_model")`` (quiet, and the same artefact serves every TFLite
variant); ONNX via ``model.export(format="onnx")`` (Keras' bundled tf2onnx bridge), because
``tf2onnx.convert.from_keras`` fails on Keras 3 models. ONNX Runtime's static quantizer needs
symbolic shape inference (sympy) or ``skip_symbolic_shape=True``; we skip it, since Keras
exports fully inferred shapes apart from the batch.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgefleet.models.base import Array
from edgefleet.models.errors import ConversionFailed, UnsupportedVariant
from edgefleet.models.tfquiet import import_tensorflow

Quantize = Literal["int8", "float16", "dynamic", "none"]
RuntimeName = Literal["litert", "onnx"]
QUANTIZE_CHOICES: tuple[Quantize, ...] = ("int8", "float16", "dynamic", "none")
MODEL_FILES: dict[str, str] = {"litert": "model.tflite", "onnx": "model.onnx"}


def quiet_tensorflow() -> Any:
    """Import TensorFlow without its log noise unless ``--verbose`` (:mod:`.tfquiet`)."""
    return import_tensorflow()


@contextlib.contextmanager
def _silenced() -> Iterator[None]:
    # Keras' exporters print artefact summaries to stdout; a CLI's progress bar must not tear.
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def export_saved_model(model: Any, directory: Path) -> Path:
    """Write ``model`` as a TensorFlow SavedModel (the common source of every TFLite variant)."""
    quiet_tensorflow()
    try:
        with _silenced():
            model.export(str(directory), format="tf_saved_model", verbose=False)
    except Exception as exc:
        raise ConversionFailed(f"Keras could not export a SavedModel: {exc}") from exc
    return directory


def to_tflite(
    saved_model: Path,
    quantize: Quantize,
    representative: Array | None = None,
    *,
    int8_io: bool = False,
    float_ops: tuple[str, ...] = (),
) -> bytes:
    """Convert a SavedModel to a ``.tflite`` flatbuffer.

    ``int8`` is full-integer quantization calibrated on ``representative``; its input and
    output stay float32 (quantize/dequantize run inside the graph) unless ``int8_io``.
    ``float_ops`` names TFLite ops kept in float32 after the int8 body (the autoencoder's
    score: an int8 score has too few levels to rank windows, see docs/models.md).
    """
    tf = quiet_tensorflow()
    conv = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    if quantize == "float16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif quantize == "dynamic":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quantize == "int8":
        if representative is None or len(representative) == 0:
            raise ConversionFailed("full int8 quantization needs a representative dataset")
        rep = representative

        def gen() -> Iterator[list[Array]]:
            for i in range(len(rep)):
                yield [rep[i : i + 1]]

        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = gen
        if float_ops:
            if int8_io:
                raise UnsupportedVariant("int8 I/O and float ops cannot be combined")
            return _selective_int8(tf, conv, gen, float_ops)
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if int8_io:
            conv.inference_input_type = tf.int8
            conv.inference_output_type = tf.int8
    elif quantize != "none":
        raise UnsupportedVariant(f"unknown quantization {quantize!r}")
    try:
        with _silenced():
            return bytes(conv.convert())
    except Exception as exc:
        raise ConversionFailed(f"TFLite conversion ({quantize}) failed: {exc}") from exc


def _selective_int8(tf: Any, conv: Any, gen: Any, float_ops: tuple[str, ...]) -> bytes:
    # The QuantizationDebugger is TFLite's supported way to leave named ops unquantized.
    opts = tf.lite.experimental.QuantizationDebugOptions(denylisted_ops=list(float_ops))
    try:
        with _silenced(), warnings.catch_warnings():
            # The debugger runs tf.lite.Interpreter internally, which warns it is deprecated.
            warnings.simplefilter("ignore", UserWarning)
            debugger = tf.lite.experimental.QuantizationDebugger(
                converter=conv, debug_dataset=gen, debug_options=opts
            )
            return bytes(debugger.get_nondebug_quantized_model())
    except Exception as exc:
        raise ConversionFailed(f"selective int8 conversion failed: {exc}") from exc


def to_onnx(model: Any, path: Path) -> Path:
    """Export ``model`` to float32 ONNX with Keras' own exporter (dynamic batch)."""
    quiet_tensorflow()
    if not getattr(model, "_called", True):
        # Keras' ONNX exporter refuses a model that was loaded from disk and never called
        # ("The model provided has never called"); one call on zeros builds its call graph.
        model(np.zeros((1, *model.input_shape[1:]), np.float32))
    try:
        with _silenced():
            model.export(str(path), format="onnx", verbose=False)
    except Exception as exc:
        raise ConversionFailed(f"ONNX export failed: {exc}") from exc
    return path


class _Calibration:
    """ONNX Runtime's CalibrationDataReader over a float32 array, one sample at a time."""

    def __init__(self, name: str, data: Array) -> None:
        self._name = name
        self._rows = iter(range(len(data)))
        self._data = data

    def get_next(self) -> dict[str, Array] | None:
        i = next(self._rows, None)
        return None if i is None else {self._name: self._data[i : i + 1]}

    def rewind(self) -> None:
        self._rows = iter(range(len(self._data)))


def quantize_onnx(
    src: Path, dst: Path, quantize: Quantize, representative: Array | None = None
) -> Path:
    """Quantize a float32 ONNX model with ONNX Runtime (static QDQ int8, dynamic, float16)."""
    import onnx

    if quantize == "none":
        dst.write_bytes(src.read_bytes())
        return dst
    try:
        if quantize == "float16":
            from onnxruntime.transformers.float16 import convert_float_to_float16

            onnx.save(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True), str(dst))
            return dst
        from onnxruntime.quantization import (
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quant_pre_process,
            quantize_dynamic,
            quantize_static,
        )

        if quantize == "dynamic":
            quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
            return dst
        if quantize != "int8":
            raise UnsupportedVariant(f"unknown quantization {quantize!r}")
        if representative is None or len(representative) == 0:
            raise ConversionFailed("static int8 quantization needs a representative dataset")
        with tempfile.TemporaryDirectory() as tmp:
            pre = Path(tmp) / "pre.onnx"
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
            name = onnx.load(str(pre)).graph.input[0].name
            quantize_static(
                str(pre),
                str(dst),
                _Calibration(name, representative),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
            )
    except (UnsupportedVariant, ConversionFailed):
        raise
    except Exception as exc:
        raise ConversionFailed(f"ONNX Runtime quantization ({quantize}) failed: {exc}") from exc
    return dst


def convert(
    model: Any,
    runtime: RuntimeName,
    quantize: Quantize,
    out: Path,
    representative: Array | None,
    *,
    workdir: Path,
    int8_io: bool = False,
    float_ops: tuple[str, ...] = (),
) -> Path:
    """Write ``model`` converted for ``runtime``/``quantize`` to ``out``.

    ``workdir`` caches the intermediate SavedModel and float ONNX so that converting one
    trained model to several variants exports it only once.
    """
    if quantize not in QUANTIZE_CHOICES:
        raise UnsupportedVariant(f"quantize must be one of {', '.join(QUANTIZE_CHOICES)}")
    workdir.mkdir(parents=True, exist_ok=True)
    if runtime == "litert":
        saved = workdir / "saved_model"
        if not (saved / "saved_model.pb").exists():
            export_saved_model(model, saved)
        rep = None if representative is None else np.asarray(representative, np.float32)
        out.write_bytes(to_tflite(saved, quantize, rep, int8_io=int8_io, float_ops=float_ops))
        return out
    if runtime == "onnx":
        if int8_io:
            raise UnsupportedVariant("ONNX bundles keep float32 I/O (QDQ quantization)")
        f32 = workdir / "model_f32.onnx"
        if not f32.exists():
            to_onnx(model, f32)
        return quantize_onnx(f32, out, quantize, representative)
    raise UnsupportedVariant(f"unknown runtime {runtime!r}; use litert or onnx")
