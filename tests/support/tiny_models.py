"""Tiny real models for the agent's tests: a Keras dense net as LiteRT (float, int8) and ONNX.

TensorFlow is slow to import and convert, so tests build these once per session
(``tiny_zoo`` in tests/edge/conftest.py) and make signed bundles from the cached files.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.protocol.bundle import VerifiedBundle, pack_bundle, write_bundle
from edgefleet.protocol.manifest import (
    BundleManifest,
    GoldenSpec,
    GoldenVectors,
    Postprocessing,
    Preprocessing,
    QuantParams,
    TensorSpec,
    encode_golden,
)
from edgefleet.signals import make_signal

WINDOW = 32
CHANNELS = ["ax", "ay", "az"]
LABELS = ["normal", "fault"]
MEAN = [0.0, 0.0, 1.0]
STD = [0.1, 0.1, 0.1]


@dataclass(frozen=True)
class TinyZoo:
    """Model files of one tiny network in every format the agent runs."""

    root: Path
    tflite_float: Path
    tflite_int8: Path
    onnx: Path
    golden_inputs: np.ndarray


def _windows(n: int, seed: int) -> np.ndarray:
    sig = make_signal("vibration", seed=seed, rate_hz=400.0)
    x = sig.read(n * WINDOW).reshape(n, WINDOW, len(CHANNELS))
    return ((x - np.array(MEAN, np.float32)) / np.array(STD, np.float32)).astype(np.float32)


def build_zoo(root: Path) -> TinyZoo:
    """Build the tiny network and write it as float and int8 ``.tflite`` and as ``.onnx``."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    root.mkdir(parents=True, exist_ok=True)
    tf.keras.utils.set_random_seed(7)
    inp = tf.keras.Input(shape=(WINDOW, len(CHANNELS)), name="window")
    h = tf.keras.layers.Flatten()(inp)
    h = tf.keras.layers.Dense(16, activation="relu")(h)
    out = tf.keras.layers.Dense(len(LABELS), activation="softmax")(h)
    model = tf.keras.Model(inp, out)
    # A few steps on normal vs faulty vibration make the outputs meaningful, not just random.
    normal = _windows(64, seed=1)
    sig = make_signal("vibration", seed=2, rate_hz=400.0)
    from edgefleet.signals import Drift

    sig.set_drift(Drift("mode", 3.0))
    fault = (
        (sig.read(64 * WINDOW).reshape(64, WINDOW, 3) - np.array(MEAN, np.float32))
        / np.array(STD, np.float32)
    ).astype(np.float32)
    x = np.concatenate([normal, fault])
    y = np.array([0] * 64 + [1] * 64)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=5, batch_size=32, verbose=0)

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    float_path = root / "tiny-float.tflite"
    float_path.write_bytes(conv.convert())

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    rep = x[:64]

    def representative() -> object:
        for i in range(len(rep)):
            yield [rep[i : i + 1]]

    conv.representative_dataset = representative
    # int8 weights and activations inside the graph, float input and output: quantizing in
    # numpy would cost more than the whole invoke of a model this small.
    conv.target_spec.supported_ops = [
        tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
        tf.lite.OpsSet.TFLITE_BUILTINS,
    ]
    int8_path = root / "tiny-int8.tflite"
    int8_path.write_bytes(conv.convert())

    onnx_path = root / "tiny.onnx"
    _write_onnx(model, onnx_path)
    # Kept for the rarer variants (int8 input/output), converted only when a test asks.
    model.save(root / "tiny.keras")
    return TinyZoo(root, float_path, int8_path, onnx_path, _windows(4, seed=11))


def _write_onnx(model: object, path: Path) -> None:
    """The same dense network as an ONNX graph built with ``onnx.helper``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    dense = [layer for layer in model.layers if layer.weights]  # type: ignore[attr-defined]
    (w1, b1), (w2, b2) = (tuple(np.asarray(v) for v in layer.get_weights()) for layer in dense)
    inits = [
        numpy_helper.from_array(np.array([-1, WINDOW * len(CHANNELS)], np.int64), "flat_shape"),
        numpy_helper.from_array(w1.astype(np.float32), "w1"),
        numpy_helper.from_array(b1.astype(np.float32), "b1"),
        numpy_helper.from_array(w2.astype(np.float32), "w2"),
        numpy_helper.from_array(b2.astype(np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("Reshape", ["window", "flat_shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w1"], ["h1"]),
        helper.make_node("Add", ["h1", "b1"], ["h1b"]),
        helper.make_node("Relu", ["h1b"], ["h1r"]),
        helper.make_node("MatMul", ["h1r", "w2"], ["h2"]),
        helper.make_node("Add", ["h2", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["scores"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("window", TensorProto.FLOAT, ["N", WINDOW, len(CHANNELS)])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", len(LABELS)])],
        inits,
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    path.write_bytes(m.SerializeToString())


# Quantization of the int8-I/O variants: inputs are standardised (|x| mostly < 6), outputs
# are softmax scores in [0, 1].
IN_QUANT = QuantParams(scale=[0.05], zero_point=[0])
OUT_QUANT = QuantParams(scale=[1 / 256], zero_point=[-128])


def int8_io_model(zoo: TinyZoo, fmt: str, dest: Path) -> Path:
    """The tiny network with int8 input and output tensors (``litert`` or ``onnx``) at ``dest``.

    LiteRT: converted from the saved Keras model with int8 inference I/O (the converter picks
    the scales; they are in the model file). ONNX: the float graph between a
    DequantizeLinear and a QuantizeLinear with ``IN_QUANT``/``OUT_QUANT``.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "onnx":
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        m = onnx.load(str(zoo.onnx))
        g = m.graph
        for node in g.node:
            node.input[:] = ["window_f" if i == "window" else i for i in node.input]
            node.output[:] = ["scores_f" if o == "scores" else o for o in node.output]
        g.initializer.extend(
            [
                numpy_helper.from_array(np.array(IN_QUANT.scale[0], np.float32), "in_scale"),
                numpy_helper.from_array(np.array(IN_QUANT.zero_point[0], np.int8), "in_zp"),
                numpy_helper.from_array(np.array(OUT_QUANT.scale[0], np.float32), "out_scale"),
                numpy_helper.from_array(np.array(OUT_QUANT.zero_point[0], np.int8), "out_zp"),
            ]
        )
        g.node.insert(
            0, helper.make_node("DequantizeLinear", ["window", "in_scale", "in_zp"], ["window_f"])
        )
        g.node.append(
            helper.make_node("QuantizeLinear", ["scores_f", "out_scale", "out_zp"], ["scores"])
        )
        g.input[0].type.tensor_type.elem_type = TensorProto.INT8
        g.output[0].type.tensor_type.elem_type = TensorProto.INT8
        onnx.checker.check_model(m)
        dest.write_bytes(m.SerializeToString())
        return dest
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    model = tf.keras.models.load_model(zoo.root / "tiny.keras")
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    rep = _windows(64, seed=1)

    def representative() -> object:
        for i in range(len(rep)):
            yield [rep[i : i + 1]]

    conv.representative_dataset = representative
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    dest.write_bytes(conv.convert())
    return dest


def reference_outputs(model_file: Path, x: np.ndarray) -> np.ndarray:
    """Outputs of ``model_file`` on ``x`` computed with the runtime's own Python API."""
    if model_file.suffix == ".onnx":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
        return np.asarray(sess.run(None, {"window": x})[0])
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(model_file))
    idx = interp.get_input_details()[0]["index"]
    interp.resize_tensor_input(idx, list(x.shape))
    interp.allocate_tensors()
    interp.set_tensor(idx, x)
    interp.invoke()
    return np.asarray(interp.get_tensor(interp.get_output_details()[0]["index"]))


def make_bundle(
    zoo: TinyZoo,
    dest: Path,
    key: Ed25519PrivateKey,
    *,
    fmt: str = "int8",
    name: str = "tiny-vib",
    version: str = "1.0.0",
    window: int = WINDOW,
    channels: list[str] | None = None,
    bad_golden: bool = False,
    postprocessing: Postprocessing | None = None,
) -> VerifiedBundle:
    """Write and sign a bundle of the tiny model in format ``int8``, ``float`` or ``onnx``.

    ``window`` or ``channels`` different from the model's make a wrong-shape bundle (the specs then
    disagree with the model file, which only the agent's load-time shape check can catch).
    """
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    src = {"int8": zoo.tflite_int8, "float": zoo.tflite_float, "onnx": zoo.onnx}[fmt]
    model_file = "model.onnx" if fmt == "onnx" else "model.tflite"
    shutil.copy(src, dest / model_file)
    chans = channels if channels is not None else list(CHANNELS)
    x = zoo.golden_inputs
    y = reference_outputs(dest / model_file, x)
    if bad_golden:
        y = y[:, ::-1].copy()  # swapped class scores: a model that does not do what it says
    (dest / "golden.json").write_bytes(
        encode_golden(GoldenVectors(inputs={"window": x.tolist()}, outputs={"scores": y.tolist()}))
    )
    manifest = BundleManifest(
        name=name,
        version=version,
        runtime="onnx" if fmt == "onnx" else "litert",
        model_file=model_file,
        quantization="int8" if fmt == "int8" else "none",
        inputs=[TensorSpec(name="window", dtype="float32", shape=[-1, window, len(chans)])],
        outputs=[TensorSpec(name="scores", dtype="float32", shape=[-1, len(LABELS)])],
        preprocessing=Preprocessing(
            kind="window",
            channels=chans,
            window=window,
            hop=window,
            sample_rate_hz=400.0,
            mean=MEAN[: len(chans)] + [0.0] * max(0, len(chans) - 3),
            std=STD[: len(chans)] + [1.0] * max(0, len(chans) - 3),
        ),
        postprocessing=postprocessing or Postprocessing(kind="classify", threshold=0.0),
        labels=list(LABELS),
        golden=GoldenSpec(file="golden.json", atol=1e-4, rtol=1e-3),
        description="tiny dense vibration classifier for the agent's tests",
    )
    return write_bundle(dest, manifest, key)


def pack(bundle: VerifiedBundle, archive: Path) -> tuple[str, int]:
    """Pack a bundle directory; return the archive's sha256 and size."""
    sha = pack_bundle(bundle.path, archive)
    return sha, archive.stat().st_size


__all__ = [
    "IN_QUANT",
    "OUT_QUANT",
    "QuantParams",
    "TinyZoo",
    "build_zoo",
    "int8_io_model",
    "make_bundle",
    "pack",
    "reference_outputs",
]
