"""Build a trainable LiteRT model with builtin ops only (TensorFlow, imported lazily).

Verified on TensorFlow 2.21 / ai-edge-litert 2.3: resource variables are initialised by an
explicit ``init`` signature (the converted model has no initialiser, and reading a variable
before ``init`` fails or returns garbage); ReLU gets a custom gradient made of builtin ops
(TensorFlow's ``ReluGrad`` is a Flex op); a fixed batch with a ``mask`` input avoids the
dynamic-shape ops of a ragged last batch; weights travel through ``get_weights`` and
``set_weights`` signatures because ``tf.raw_ops`` save/restore needs Flex ops.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edgefleet.models.errors import ConversionFailed
from edgefleet.models.trainable.reference import Array, check_weights
from edgefleet.models.trainable.spec import TrainableSpec


def _relu(tf: Any) -> Any:
    @tf.custom_gradient  # type: ignore[untyped-decorator]
    def relu(x: Any) -> Any:
        y = tf.maximum(x, 0.0)

        def grad(dy: Any) -> Any:
            return dy * tf.cast(x > 0.0, tf.float32)

        return y, grad

    return relu


def _module(tf: Any, spec: TrainableSpec, weights: list[Array]) -> Any:
    relu = _relu(tf)
    b, d = spec.batch, spec.input_dim
    n = len(weights)
    labelled = spec.loss == "sparse_ce"

    class Trainable(tf.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.initial = [tf.constant(w) for w in weights]
            self.w = [tf.Variable(w, name=f"w{i:02d}") for i, w in enumerate(weights)]

        def logits(self, x: Any) -> Any:
            h = x * spec.input_scale
            for i, layer in enumerate(spec.layers):
                h = tf.matmul(h, self.w[2 * i]) + self.w[2 * i + 1]
                if layer.activation == "relu":
                    h = relu(h)
            return h

        def per_row(self, x: Any, y: Any) -> Any:
            z = self.logits(x)
            if not labelled:
                return tf.reduce_mean(tf.square(z - x), axis=-1)
            # Cross-entropy from logits with builtin ops (stable log-sum-exp).
            z = z - tf.stop_gradient(tf.reduce_max(z, axis=-1, keepdims=True))
            lse = tf.math.log(tf.reduce_sum(tf.exp(z), axis=-1))
            picked = tf.reduce_sum(tf.one_hot(y, spec.layers[-1].units) * z, axis=-1)
            return lse - picked

        def masked(self, x: Any, y: Any, mask: Any) -> Any:
            total = tf.maximum(tf.reduce_sum(mask), 1.0)
            return tf.reduce_sum(self.per_row(x, y) * mask) / total

        @tf.function(input_signature=[])  # type: ignore[untyped-decorator]
        def init(self) -> Any:
            for var, value in zip(self.w, self.initial, strict=True):
                var.assign(value)
            return {"ok": tf.constant(1.0)}

        @tf.function(input_signature=[])  # type: ignore[untyped-decorator]
        def get_weights(self) -> Any:
            return {f"w{i:02d}": tf.identity(v) for i, v in enumerate(self.w)}

        @tf.function(
            input_signature=[
                tf.TensorSpec(w.shape, tf.float32, name=f"w{i:02d}") for i, w in enumerate(weights)
            ]
        )  # type: ignore[untyped-decorator]
        def set_weights(self, *ws: Any) -> Any:
            for var, value in zip(self.w, ws, strict=True):
                var.assign(value)
            return {"ok": tf.constant(1.0)}

        @tf.function(input_signature=[tf.TensorSpec([b, d], tf.float32, name="x")])  # type: ignore[untyped-decorator]
        def infer(self, x: Any) -> Any:
            z = self.logits(x)
            if labelled:
                return {"output": tf.nn.softmax(z)}
            return {"output": tf.reduce_mean(tf.square(x - z), axis=-1, keepdims=True)}

    x_spec = tf.TensorSpec([b, d], tf.float32, name="x")
    y_spec = tf.TensorSpec([b], tf.int32, name="y")
    m_spec = tf.TensorSpec([b], tf.float32, name="mask")
    lr_spec = tf.TensorSpec([], tf.float32, name="lr")

    def step(module: Any, x: Any, y: Any, mask: Any, lr: Any) -> Any:
        with tf.GradientTape() as tape:
            value = module.masked(x, y, mask)
        grads = tape.gradient(value, module.w)
        for var, g in zip(module.w, grads, strict=True):
            var.assign_sub(lr * g)
        return {"loss": value}

    module = Trainable()
    if labelled:
        module.train = tf.function(
            lambda x, y, mask, lr: step(module, x, y, mask, lr),
            input_signature=[x_spec, y_spec, m_spec, lr_spec],
        )
        module.evaluate = tf.function(
            lambda x, y, mask: {"loss": module.masked(x, y, mask)},
            input_signature=[x_spec, y_spec, m_spec],
        )
    else:
        module.train = tf.function(
            lambda x, mask, lr: step(module, x, None, mask, lr),
            input_signature=[x_spec, m_spec, lr_spec],
        )
        module.evaluate = tf.function(
            lambda x, mask: {"loss": module.masked(x, None, mask)},
            input_signature=[x_spec, m_spec],
        )
    del n
    return module


def trainable_module(spec: TrainableSpec, weights: Sequence[Array]) -> Any:
    """The ``tf.Module`` behind the LiteRT model: runs the same graph in TensorFlow (tests)."""
    from edgefleet.models.convert import quiet_tensorflow

    tf = quiet_tensorflow()
    return _module(tf, spec, check_weights(spec, weights))


def build_trainable(spec: TrainableSpec, weights: Sequence[Array], workdir: Any) -> bytes:
    """A ``.tflite`` flatbuffer with the training signatures, builtin ops only.

    ``weights`` are the values ``init`` restores (Keras order); ``workdir`` holds the
    intermediate SavedModel.
    """
    from pathlib import Path

    from edgefleet.models.convert import _silenced, quiet_tensorflow

    tf = quiet_tensorflow()
    module = _module(tf, spec, check_weights(spec, weights))
    saved = Path(workdir) / "trainable_saved_model"
    names = ("init", "train", "evaluate", "infer", "get_weights", "set_weights")
    signatures = {k: getattr(module, k).get_concrete_function() for k in names}
    try:
        with _silenced():
            tf.saved_model.save(module, str(saved), signatures=signatures)
            conv = tf.lite.TFLiteConverter.from_saved_model(str(saved), signature_keys=list(names))
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
            conv.experimental_enable_resource_variables = True
            return bytes(conv.convert())
    except Exception as exc:
        raise ConversionFailed(f"{spec.name}: trainable LiteRT conversion failed: {exc}") from exc


def np_weights(weights: Sequence[Any]) -> list[Array]:
    """Weights as contiguous float32 arrays."""
    return [np.ascontiguousarray(w, dtype=np.float32) for w in weights]
