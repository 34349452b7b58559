"""Build a trainable LiteRT model with builtin ops only (TensorFlow, imported lazily).

Verified on TensorFlow 2.21 / ai-edge-litert 2.3: resource variables are initialised by an
explicit ``init`` signature (the converted model has no initialiser, and reading a variable
before ``init`` fails or returns garbage); ReLU gets a custom gradient made of builtin ops
(TensorFlow's ``ReluGrad`` is a Flex op); a fixed batch with a ``mask`` input avoids the
dynamic-shape ops of a ragged last batch; weights travel through ``get_weights`` and
``set_weights`` signatures because ``tf.raw_ops`` save/restore needs Flex ops.

FedProx: ``train`` takes ``mu`` and steps ``w -= lr * (grad + mu * (w - anchor))``, the
gradient of ``loss + mu/2 * ||w - anchor||^2``; the anchor variables hold the weights last
given to ``set_weights`` (or ``init``), i.e. the global weights of the round. ``mu = 0``
leaves exactly the plain SGD step.

A frozen base (:class:`~edgefleet.models.trainable.spec.FrozenBase`) runs forward as
builtin CONV_2D/MAX_POOL_2D/MEAN ops over constant weights: no variable feeds it, so no
(Flex) convolution gradient is ever built.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edgefleet.models.errors import ConversionFailed
from edgefleet.models.trainable.reference import Array, check_weights
from edgefleet.models.trainable.spec import FrozenBase, TrainableSpec


def _relu(tf: Any) -> Any:
    @tf.custom_gradient  # type: ignore[untyped-decorator]
    def relu(x: Any) -> Any:
        y = tf.maximum(x, 0.0)

        def grad(dy: Any) -> Any:
            return dy * tf.cast(x > 0.0, tf.float32)

        return y, grad

    return relu


def _base(tf: Any, base: FrozenBase) -> Any:
    """The frozen base as a function of the (scaled) flat input: constants only."""
    consts = [tf.constant(w) for w in base.weights]

    def features(x: Any) -> Any:
        h = tf.reshape(x, [-1, *base.input_shape])
        ws = iter(consts)
        for layer in base.layers:
            if layer.kind == "conv1d":
                kernel, bias = next(ws), next(ws)
                h = tf.nn.conv1d(h, kernel, stride=1, padding=layer.padding.upper()) + bias
                if layer.activation == "relu":
                    h = tf.nn.relu(h)
            elif layer.kind == "maxpool1d":
                h = tf.nn.max_pool1d(h, layer.pool, layer.pool, "VALID")
            else:
                h = tf.reduce_mean(h, axis=1)
        return tf.stop_gradient(h)

    return features


def _module(tf: Any, spec: TrainableSpec, weights: list[Array], proximal: bool = True) -> Any:
    relu = _relu(tf)
    b, d = spec.batch, spec.input_dim
    labelled = spec.loss == "sparse_ce"
    base = _base(tf, spec.base) if spec.base is not None else None

    class Trainable(tf.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.initial = [tf.constant(w) for w in weights]
            self.w = [tf.Variable(w, name=f"w{i:02d}") for i, w in enumerate(weights)]
            self.anchor = (
                [tf.Variable(w, name=f"a{i:02d}") for i, w in enumerate(weights)]
                if proximal
                else []
            )

        def logits(self, x: Any) -> Any:
            h = x * spec.input_scale
            if base is not None:
                h = base(h)
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
            # The anchors too: an uninitialised anchor read by ``train`` (even times mu = 0)
            # could be NaN and poison the step.
            for var, value in zip(self.w, self.initial, strict=True):
                var.assign(value)
            for var, value in zip(self.anchor, self.initial, strict=False):
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
            for var, value in zip(self.anchor, ws, strict=False):
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
    mu_spec = tf.TensorSpec([], tf.float32, name="mu")

    def step(module: Any, x: Any, y: Any, mask: Any, *, lr: Any, mu: Any = None) -> Any:
        with tf.GradientTape() as tape:
            value = module.masked(x, y, mask)
        grads = tape.gradient(value, module.w)
        if mu is None:
            for var, g in zip(module.w, grads, strict=True):
                var.assign_sub(lr * g)
            return {"loss": value}
        # The proximal gradient is added by hand, not through the tape: with mu = 0 the step
        # is lr * (g + 0), exactly the plain one (tested against a model without the term).
        for var, g, a in zip(module.w, grads, module.anchor, strict=True):
            var.assign_sub(lr * (g + mu * (var - a)))
        return {"loss": value}

    module = Trainable()
    if labelled and proximal:
        module.train = tf.function(
            lambda x, y, mask, lr, mu: step(module, x, y, mask, lr=lr, mu=mu),
            input_signature=[x_spec, y_spec, m_spec, lr_spec, mu_spec],
        )
        module.evaluate = tf.function(
            lambda x, y, mask: {"loss": module.masked(x, y, mask)},
            input_signature=[x_spec, y_spec, m_spec],
        )
    elif proximal:
        module.train = tf.function(
            lambda x, mask, lr, mu: step(module, x, None, mask, lr=lr, mu=mu),
            input_signature=[x_spec, m_spec, lr_spec, mu_spec],
        )
        module.evaluate = tf.function(
            lambda x, mask: {"loss": module.masked(x, None, mask)},
            input_signature=[x_spec, m_spec],
        )
    elif labelled:
        module.train = tf.function(
            lambda x, y, mask, lr: step(module, x, y, mask, lr=lr),
            input_signature=[x_spec, y_spec, m_spec, lr_spec],
        )
        module.evaluate = tf.function(
            lambda x, y, mask: {"loss": module.masked(x, y, mask)},
            input_signature=[x_spec, y_spec, m_spec],
        )
    else:
        module.train = tf.function(
            lambda x, mask, lr: step(module, x, None, mask, lr=lr),
            input_signature=[x_spec, m_spec, lr_spec],
        )
        module.evaluate = tf.function(
            lambda x, mask: {"loss": module.masked(x, None, mask)},
            input_signature=[x_spec, m_spec],
        )
    return module


def trainable_module(spec: TrainableSpec, weights: Sequence[Array], proximal: bool = True) -> Any:
    """The ``tf.Module`` behind the LiteRT model: runs the same graph in TensorFlow (tests)."""
    from edgefleet.models.convert import quiet_tensorflow

    tf = quiet_tensorflow()
    return _module(tf, spec, check_weights(spec, weights), proximal)


def build_trainable(
    spec: TrainableSpec, weights: Sequence[Array], workdir: Any, *, proximal: bool = True
) -> bytes:
    """A ``.tflite`` flatbuffer with the training signatures, builtin ops only.

    ``weights`` are the values ``init`` restores (the head's, Keras order); ``workdir``
    holds the intermediate SavedModel. ``proximal=False`` builds the signatures of models
    made before FedProx support (no ``mu``), to check that those still train.
    """
    from pathlib import Path

    from edgefleet.models.convert import _silenced, quiet_tensorflow

    tf = quiet_tensorflow()
    module = _module(tf, spec, check_weights(spec, weights), proximal)
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


def freeze_base(keras_model: Any, spec: TrainableSpec) -> Any:
    """Mark the Keras layers of ``spec``'s frozen base untrainable; returns the model.

    A centralised Keras run of a model with a frozen base must train the same parameters as
    the devices; recompile the model afterwards (Keras reads ``trainable`` at compile time).
    """
    if spec.base is None:
        return keras_model
    for layer in keras_model.layers:
        if type(layer).__name__ in ("Conv1D", "MaxPooling1D", "GlobalAveragePooling1D"):
            layer.trainable = False
    return keras_model
