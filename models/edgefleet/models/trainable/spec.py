"""What a trainable model is made of: dense layers, an input scale and a loss (no TensorFlow).

A model whose convolutions cannot train in LiteRT (their gradients are Flex ops) gets a
:class:`FrozenBase`: the convolutional part runs forward with constant weights and only the
dense head trains; the weights exchanged with the server are the head's.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from edgefleet.models.errors import UnsupportedVariant

Activation = Literal["relu", "linear", "softmax"]
Loss = Literal["reconstruction", "sparse_ce"]
FrozenKind = Literal["conv1d", "maxpool1d", "gap1d"]
Padding = Literal["same", "valid"]
_Array = npt.NDArray[np.float32]
# Signature names every trainable model exposes (docs/federated.md, "Trainable models").
SIGNATURES = ("init", "train", "evaluate", "infer", "get_weights", "set_weights")
DEFAULT_BATCH = 32


@dataclass(frozen=True, slots=True)
class DenseLayer:
    """One fully connected layer: ``activation(x @ kernel + bias)``."""

    units: int
    activation: Activation

    def __post_init__(self) -> None:
        if self.units < 1:
            raise UnsupportedVariant("a dense layer needs at least one unit")
        if self.activation not in ("relu", "linear", "softmax"):
            raise UnsupportedVariant(f"activation {self.activation!r} cannot train in LiteRT")


@dataclass(frozen=True, slots=True)
class FrozenLayer:
    """One layer of a frozen base: a 1D convolution (stride 1), a max pooling or a global mean."""

    kind: FrozenKind
    filters: int = 0
    kernel: int = 0
    padding: Padding = "same"
    activation: Activation = "linear"
    pool: int = 0

    def __post_init__(self) -> None:
        if self.kind == "conv1d" and (self.filters < 1 or self.kernel < 1):
            raise UnsupportedVariant("a frozen conv1d needs filters and a kernel size")
        if self.kind == "conv1d" and self.activation not in ("relu", "linear"):
            raise UnsupportedVariant(f"a frozen conv1d cannot use {self.activation!r}")
        if self.kind == "maxpool1d" and self.pool < 1:
            raise UnsupportedVariant("a frozen max pooling needs a pool size")
        if self.padding not in ("same", "valid"):
            raise UnsupportedVariant(f"padding {self.padding!r} is not supported")

    def to_json(self) -> dict[str, Any]:
        """A JSON-able form."""
        return {
            "kind": self.kind,
            "filters": self.filters,
            "kernel": self.kernel,
            "padding": self.padding,
            "activation": self.activation,
            "pool": self.pool,
        }


def _encode(w: _Array) -> dict[str, Any]:
    # Base64 of little-endian float32: exact and ~4x smaller than a list of floats in JSON.
    data = np.ascontiguousarray(w, "<f4").tobytes()
    return {"shape": list(w.shape), "data": base64.b64encode(data).decode("ascii")}


def _decode(item: dict[str, Any]) -> _Array:
    raw = np.frombuffer(base64.b64decode(item["data"]), "<f4")
    return raw.reshape([int(d) for d in item["shape"]]).astype(np.float32)


class FrozenBase:
    """A convolutional feature extractor with constant weights in front of the dense head.

    ``input_shape`` is (steps, channels); the model's input is that window, flattened.
    ``weights`` are the conv layers' kernels and biases in Keras order.
    """

    __slots__ = ("input_shape", "layers", "weights")

    def __init__(
        self,
        input_shape: tuple[int, int],
        layers: Sequence[FrozenLayer],
        weights: Sequence[npt.NDArray[np.generic]],
    ) -> None:
        self.input_shape = (int(input_shape[0]), int(input_shape[1]))
        self.layers = tuple(layers)
        self.weights = tuple(np.asarray(w, np.float32) for w in weights)
        if not self.layers or self.layers[-1].kind != "gap1d":
            raise UnsupportedVariant("a frozen base must end in a global average pooling")
        want = self.shapes()
        got = [tuple(w.shape) for w in self.weights]
        if got != want:
            raise UnsupportedVariant(f"frozen base weights have shapes {got}, expected {want}")

    def shapes(self) -> list[tuple[int, ...]]:
        """Weight shapes in Keras order: kernel (k, in, out) then bias of each conv."""
        out: list[tuple[int, ...]] = []
        channels = self.input_shape[1]
        for layer in self.layers:
            if layer.kind == "conv1d":
                out += [(layer.kernel, channels, layer.filters), (layer.filters,)]
                channels = layer.filters
        return out

    @property
    def output_dim(self) -> int:
        """Features the base hands to the head (channels of its last conv)."""
        channels = self.input_shape[1]
        for layer in self.layers:
            if layer.kind == "conv1d":
                channels = layer.filters
        return channels

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FrozenBase):
            return NotImplemented
        return (
            self.input_shape == other.input_shape
            and self.layers == other.layers
            and len(self.weights) == len(other.weights)
            and all(np.array_equal(a, b) for a, b in zip(self.weights, other.weights, strict=True))
        )

    def __hash__(self) -> int:
        return hash((self.input_shape, self.layers))

    def __repr__(self) -> str:
        return f"FrozenBase(input_shape={self.input_shape}, layers={len(self.layers)})"

    def to_json(self) -> dict[str, Any]:
        """A JSON-able form; the weights travel exactly (base64 float32)."""
        return {
            "input_shape": list(self.input_shape),
            "layers": [layer.to_json() for layer in self.layers],
            "weights": [_encode(w) for w in self.weights],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FrozenBase:
        """The inverse of :meth:`to_json`."""
        shape = data["input_shape"]
        return cls(
            (int(shape[0]), int(shape[1])),
            [FrozenLayer(**layer) for layer in data["layers"]],
            [_decode(w) for w in data["weights"]],
        )


@dataclass(frozen=True, slots=True)
class TrainableSpec:
    """A stack of dense layers over a scaled input, trained with ``loss`` on fixed batches.

    ``reconstruction`` trains an autoencoder (target = input, the output is the per-row mean
    squared error); ``sparse_ce`` trains a classifier whose last layer is a softmax. With a
    ``base`` the dense layers are a head over frozen convolutional features; ``input_dim`` is
    then the flattened window and :meth:`shapes` lists the head's weights only.
    """

    name: str
    input_dim: int
    layers: tuple[DenseLayer, ...]
    loss: Loss
    input_scale: float = 1.0
    batch: int = DEFAULT_BATCH
    base: FrozenBase | None = None

    def __post_init__(self) -> None:
        if self.input_dim < 1 or not self.layers:
            raise UnsupportedVariant(f"{self.name}: a trainable model needs an input and layers")
        if self.base is not None:
            steps, channels = self.base.input_shape
            if steps * channels != self.input_dim:
                raise UnsupportedVariant(f"{self.name}: the base's window is not the input size")
            if self.loss != "sparse_ce":
                raise UnsupportedVariant(f"{self.name}: a frozen base needs a classifier head")
        if self.batch < 1:
            raise UnsupportedVariant("the training batch must be at least 1")
        if self.loss == "reconstruction" and self.layers[-1].units != self.input_dim:
            raise UnsupportedVariant(f"{self.name}: an autoencoder must output its input size")
        if self.loss == "sparse_ce" and self.layers[-1].activation != "softmax":
            raise UnsupportedVariant(f"{self.name}: a classifier must end in a softmax")

    def shapes(self) -> list[tuple[int, ...]]:
        """Weight shapes in Keras order: kernel then bias of each layer."""
        out: list[tuple[int, ...]] = []
        fan_in = self.head_input_dim
        for layer in self.layers:
            out += [(fan_in, layer.units), (layer.units,)]
            fan_in = layer.units
        return out

    @property
    def head_input_dim(self) -> int:
        """Inputs of the first dense layer: the base's features, or the scaled input."""
        return self.base.output_dim if self.base is not None else self.input_dim

    def keras_shapes(self) -> list[tuple[int, ...]]:
        """Shapes of the whole Keras model's weights: the frozen base's, then the head's."""
        return (self.base.shapes() if self.base is not None else []) + self.shapes()

    def head_weights(self, keras_weights: Sequence[npt.NDArray[np.generic]]) -> list[_Array]:
        """The trained (exchanged) part of the Keras model's weights: all but the base's."""
        if [tuple(w.shape) for w in keras_weights] != self.keras_shapes():
            raise UnsupportedVariant(
                f"{self.name}: the Keras weights do not fit the trainable spec "
                f"(expected shapes {self.keras_shapes()})"
            )
        skip = len(self.base.weights) if self.base is not None else 0
        return [np.asarray(w, np.float32) for w in keras_weights[skip:]]

    def keras_weights(self, head: Sequence[npt.NDArray[np.generic]]) -> list[_Array]:
        """The Keras model's weights for trained ``head`` weights: the frozen base put back."""
        if [tuple(w.shape) for w in head] != self.shapes():
            raise UnsupportedVariant(
                f"{self.name}: expected head weights of shapes {self.shapes()}"
            )
        base = list(self.base.weights) if self.base is not None else []
        return base + [np.asarray(w, np.float32) for w in head]

    def to_json(self) -> dict[str, Any]:
        """A JSON-able form, kept next to a trainable ``.tflite``."""
        out = {
            "name": self.name,
            "input_dim": self.input_dim,
            "layers": [[layer.units, layer.activation] for layer in self.layers],
            "loss": self.loss,
            "input_scale": self.input_scale,
            "batch": self.batch,
        }
        if self.base is not None:
            out["base"] = self.base.to_json()
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainableSpec:
        """The inverse of :meth:`to_json`."""
        try:
            return cls(
                name=str(data["name"]),
                input_dim=int(data["input_dim"]),
                layers=tuple(DenseLayer(int(u), a) for u, a in data["layers"]),
                loss=data["loss"],
                input_scale=float(data["input_scale"]),
                batch=int(data["batch"]),
                base=FrozenBase.from_json(data["base"]) if data.get("base") else None,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UnsupportedVariant(f"not a trainable spec: {exc}") from None


def _frozen_layer(name: str, layer: Any) -> FrozenLayer:
    kind = type(layer).__name__

    def one(v: Any) -> int:
        return int(v[0]) if isinstance(v, tuple | list) else int(v)

    where = f"{name}: layer {layer.name} ({kind})"
    if kind == "Conv1D":
        if one(layer.strides) != 1 or one(layer.dilation_rate) != 1 or layer.groups != 1:
            raise UnsupportedVariant(f"{where}: only stride 1, no dilation, no groups")
        if not layer.use_bias or layer.data_format != "channels_last":
            raise UnsupportedVariant(f"{where}: needs a bias and channels_last")
        return FrozenLayer(
            "conv1d",
            filters=int(layer.filters),
            kernel=one(layer.kernel_size),
            padding=str(layer.padding),  # type: ignore[arg-type]
            activation=layer.activation.__name__,
        )
    if kind == "MaxPooling1D":
        pool = one(layer.pool_size)
        if one(layer.strides) != pool or layer.padding != "valid":
            raise UnsupportedVariant(f"{where}: only strides = pool size, valid padding")
        return FrozenLayer("maxpool1d", pool=pool)
    if kind == "GlobalAveragePooling1D" and not getattr(layer, "keepdims", False):
        return FrozenLayer("gap1d")
    raise UnsupportedVariant(
        f"{where} cannot run in LiteRT's trainable models: only all-dense models, or dense "
        "heads over a frozen Conv1D/MaxPooling1D/GlobalAveragePooling1D base, have a "
        "trainable variant"
    )


def spec_from_keras(name: str, task: str, model: Any, batch: int = DEFAULT_BATCH) -> TrainableSpec:
    """Read the trainable spec of a Keras model: Input, Rescaling, a frozen base, Dense layers.

    Dense layers train. A leading stack of Conv1D/MaxPooling1D ending in a global average
    pooling becomes a :class:`FrozenBase` holding the model's current conv weights: their
    gradients need Flex ops that LiteRT does not ship (docs/federated.md), so they run
    forward only. Anything else raises :class:`UnsupportedVariant`.
    """
    scale = 1.0
    layers: list[DenseLayer] = []
    frozen: list[FrozenLayer] = []
    base_weights: list[Any] = []
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "InputLayer":
            continue
        if kind == "Rescaling" and not layers and not frozen:
            if float(getattr(layer, "offset", 0.0)) != 0.0:
                raise UnsupportedVariant(f"{name}: a Rescaling offset is not supported")
            scale *= float(layer.scale)
            continue
        if kind != "Dense":
            if layers or (frozen and frozen[-1].kind == "gap1d"):
                raise UnsupportedVariant(
                    f"{name}: layer {layer.name} ({kind}) after the trainable head or the "
                    "global pooling cannot run in LiteRT's trainable models"
                )
            frozen.append(_frozen_layer(name, layer))
            base_weights += [np.asarray(w, np.float32) for w in layer.get_weights()]
            continue
        if frozen and frozen[-1].kind != "gap1d":
            raise UnsupportedVariant(f"{name}: a frozen base must end in a global pooling")
        act = layer.activation.__name__
        layers.append(DenseLayer(int(layer.units), act))
    loss: Loss = "reconstruction" if task == "anomaly" else "sparse_ce"
    base = None
    shape = tuple(int(d) for d in model.input_shape[1:])
    if frozen:
        if len(shape) != 2:
            raise UnsupportedVariant(f"{name}: a frozen base takes (steps, channels) windows")
        base = FrozenBase((shape[0], shape[1]), frozen, base_weights)
    elif len(shape) != 1:
        raise UnsupportedVariant(f"{name}: a dense model takes flat inputs, not {shape}")
    return TrainableSpec(
        name=name,
        input_dim=int(np.prod(shape)),
        layers=tuple(layers),
        loss=loss,
        input_scale=scale,
        batch=batch,
        base=base,
    )
