"""The trainable models' forward pass and loss in numpy: server-side evaluation without TF."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from edgefleet.models.errors import UnsupportedVariant
from edgefleet.models.trainable.spec import FrozenBase, TrainableSpec

Array = npt.NDArray[np.float32]


def check_weights(spec: TrainableSpec, weights: Sequence[npt.NDArray[np.generic]]) -> list[Array]:
    """The weights as float32 arrays, or :class:`UnsupportedVariant` if the shapes differ."""
    want = spec.shapes()
    if len(weights) != len(want):
        raise UnsupportedVariant(
            f"{spec.name}: expected {len(want)} weight arrays, got {len(weights)}"
        )
    out = []
    for i, (w, shape) in enumerate(zip(weights, want, strict=True)):
        if tuple(w.shape) != shape:
            raise UnsupportedVariant(f"{spec.name}: weight {i} has shape {w.shape}, not {shape}")
        out.append(np.asarray(w, np.float32))
    return out


def check_keras_weights(
    spec: TrainableSpec, weights: Sequence[npt.NDArray[np.generic]]
) -> list[Array]:
    """The whole Keras model's weights (frozen base first) as float32 arrays, checked."""
    want = spec.keras_shapes()
    got = [tuple(w.shape) for w in weights]
    if got != want:
        raise UnsupportedVariant(f"{spec.name}: Keras weights have shapes {got}, not {want}")
    return [np.asarray(w, np.float32) for w in weights]


def base_features(base: FrozenBase, x: Array) -> Array:
    """The frozen base's output for windows ``x`` (flattened or (n, steps, channels))."""
    h = np.asarray(x, np.float32).reshape(-1, *base.input_shape)
    ws = iter(base.weights)
    for layer in base.layers:
        if layer.kind == "conv1d":
            kernel, bias = next(ws), next(ws)
            k = layer.kernel
            if layer.padding == "same":
                # TensorFlow's SAME padding puts the odd extra step on the right.
                left = (k - 1) // 2
                h = np.pad(h, ((0, 0), (left, k - 1 - left), (0, 0)))
            win = np.lib.stride_tricks.sliding_window_view(h, k, axis=1)  # (n, t, c, k)
            h = np.einsum("ntck,kcf->ntf", win, kernel, optimize=True) + bias
            if layer.activation == "relu":
                h = np.maximum(h, 0)
        elif layer.kind == "maxpool1d":
            p = layer.pool
            t = h.shape[1] // p
            h = h[:, : t * p].reshape(h.shape[0], t, p, h.shape[2]).max(axis=2)
        else:
            h = h.mean(axis=1)
    return h.astype(np.float32)


def forward(spec: TrainableSpec, weights: Sequence[Array], x: Array) -> Array:
    """The last layer's activations (softmax probabilities or the reconstruction)."""
    w = check_weights(spec, weights)
    h = np.asarray(x, np.float32)
    if spec.base is not None:
        h = base_features(spec.base, h * np.float32(spec.input_scale))
    else:
        h = h.reshape(len(h), -1) * np.float32(spec.input_scale)
    for i, layer in enumerate(spec.layers):
        h = h @ w[2 * i] + w[2 * i + 1]
        if layer.activation == "relu":
            h = np.maximum(h, 0)
        elif layer.activation == "softmax":
            z = np.exp(h - h.max(axis=-1, keepdims=True))
            h = z / z.sum(axis=-1, keepdims=True)
    return h.astype(np.float32)


def outputs(spec: TrainableSpec, weights: Sequence[Array], x: Array) -> Array:
    """What the exported model outputs: class probabilities, or the anomaly score (1 column)."""
    y = forward(spec, weights, x)
    if spec.loss == "reconstruction":
        flat = np.asarray(x, np.float32).reshape(len(y), -1)
        score: Array = np.mean(np.square(flat - y), axis=-1, keepdims=True)
        return score
    return y


def loss(
    spec: TrainableSpec, weights: Sequence[Array], x: Array, y: npt.NDArray[np.int64] | None
) -> float:
    """Mean training loss over ``x`` (and labels ``y`` for classifiers)."""
    if spec.loss == "reconstruction":
        return float(outputs(spec, weights, x).mean())
    if y is None:
        raise UnsupportedVariant(f"{spec.name}: a classifier's loss needs labels")
    p = forward(spec, weights, x)
    return float(-np.log(np.maximum(p[np.arange(len(y)), y], 1e-12)).mean())
