"""What a trainable model is made of: dense layers, an input scale and a loss (no TensorFlow)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from edgefleet.models.errors import UnsupportedVariant

Activation = Literal["relu", "linear", "softmax"]
Loss = Literal["reconstruction", "sparse_ce"]
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
class TrainableSpec:
    """A stack of dense layers over a scaled input, trained with ``loss`` on fixed batches.

    ``reconstruction`` trains an autoencoder (target = input, the output is the per-row mean
    squared error); ``sparse_ce`` trains a classifier whose last layer is a softmax.
    """

    name: str
    input_dim: int
    layers: tuple[DenseLayer, ...]
    loss: Loss
    input_scale: float = 1.0
    batch: int = DEFAULT_BATCH

    def __post_init__(self) -> None:
        if self.input_dim < 1 or not self.layers:
            raise UnsupportedVariant(f"{self.name}: a trainable model needs an input and layers")
        if self.batch < 1:
            raise UnsupportedVariant("the training batch must be at least 1")
        if self.loss == "reconstruction" and self.layers[-1].units != self.input_dim:
            raise UnsupportedVariant(f"{self.name}: an autoencoder must output its input size")
        if self.loss == "sparse_ce" and self.layers[-1].activation != "softmax":
            raise UnsupportedVariant(f"{self.name}: a classifier must end in a softmax")

    def shapes(self) -> list[tuple[int, ...]]:
        """Weight shapes in Keras order: kernel then bias of each layer."""
        out: list[tuple[int, ...]] = []
        fan_in = self.input_dim
        for layer in self.layers:
            out += [(fan_in, layer.units), (layer.units,)]
            fan_in = layer.units
        return out

    def to_json(self) -> dict[str, Any]:
        """A JSON-able form, kept next to a trainable ``.tflite``."""
        return {
            "name": self.name,
            "input_dim": self.input_dim,
            "layers": [[layer.units, layer.activation] for layer in self.layers],
            "loss": self.loss,
            "input_scale": self.input_scale,
            "batch": self.batch,
        }

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
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UnsupportedVariant(f"not a trainable spec: {exc}") from None


def spec_from_keras(name: str, task: str, model: Any, batch: int = DEFAULT_BATCH) -> TrainableSpec:
    """Read the trainable spec of a Keras model made of Input, Rescaling and Dense layers.

    Convolutions and anything else raise :class:`UnsupportedVariant`: their gradients need
    Flex ops that LiteRT does not ship (docs/federated.md).
    """
    scale = 1.0
    layers: list[DenseLayer] = []
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "InputLayer":
            continue
        if kind == "Rescaling" and not layers:
            if float(getattr(layer, "offset", 0.0)) != 0.0:
                raise UnsupportedVariant(f"{name}: a Rescaling offset is not supported")
            scale *= float(layer.scale)
            continue
        if kind != "Dense":
            raise UnsupportedVariant(
                f"{name}: layer {layer.name} ({kind}) cannot train in LiteRT with builtin ops; "
                "only all-dense models have a trainable variant"
            )
        act = layer.activation.__name__
        layers.append(DenseLayer(int(layer.units), act))
    loss: Loss = "reconstruction" if task == "anomaly" else "sparse_ce"
    return TrainableSpec(
        name=name,
        input_dim=int(model.input_shape[-1]),
        layers=tuple(layers),
        loss=loss,
        input_scale=scale,
        batch=batch,
    )
