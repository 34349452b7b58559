"""Train a zoo model once and keep it (weights + seed) so it converts to every runtime."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.models.base import Array, Dataset, ReferenceModel
from edgefleet.models.convert import quiet_tensorflow
from edgefleet.models.zoo import get_model

# (stage, done, total): how long operations report progress without knowing about rich.
Report = Callable[[str, int, int], None]
WEIGHTS_FILE = "model.weights.h5"
META_FILE = "trained.json"


def _no_report(stage: str, done: int, total: int) -> None:
    return None


@dataclass(eq=False)
class TrainedModel:
    """A trained Keras model of the zoo with the data it was trained and checked on.

    ``workdir`` (optional) caches conversion intermediates between bundles of this model.
    """

    spec: ReferenceModel
    keras_model: Any
    data: Dataset
    seed: int
    epochs: int
    small: bool
    train_seconds: float = 0.0
    workdir: Path | None = None
    _inference: Any = field(default=None, repr=False)
    _test_outputs: Array | None = field(default=None, repr=False)

    @property
    def inference_model(self) -> Any:
        """The Keras model that is exported (built once)."""
        if self._inference is None:
            self._inference = self.spec.inference(self.keras_model)
        return self._inference

    def predict(self, x: Array) -> Array:
        """Keras outputs of the inference model for ``x``."""
        y = self.inference_model.predict(x, batch_size=256, verbose=0)
        return np.asarray(y, dtype=np.float32)

    @property
    def test_outputs(self) -> Array:
        """Keras outputs on the held-out set, the reference for parity."""
        if self._test_outputs is None:
            self._test_outputs = self.predict(self.data.x_test)
        return self._test_outputs

    def weights(self) -> list[Array]:
        """The training model's weights, in Keras order (what on-device training updates)."""
        return [np.asarray(w, np.float32) for w in self.keras_model.get_weights()]

    def save(self, directory: Path) -> Path:
        """Write weights and metadata so :func:`load_trained` can rebuild this model."""
        directory.mkdir(parents=True, exist_ok=True)
        self.keras_model.save_weights(str(directory / WEIGHTS_FILE))
        meta = {
            "name": self.spec.name,
            "seed": self.seed,
            "epochs": self.epochs,
            "small": self.small,
            "train_seconds": self.train_seconds,
        }
        (directory / META_FILE).write_text(json.dumps(meta, indent=2))
        return directory


class _EpochReport:
    """A Keras callback forwarding epoch ends to a :data:`Report`."""

    def __new__(cls, report: Report, total: int) -> Any:
        from edgefleet.models.tfquiet import import_keras

        base: Any = import_keras().callbacks.Callback

        class Callback(base):  # type: ignore[misc]
            def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
                report("train", epoch + 1, total)

        return Callback()


def train_model(
    name: str,
    *,
    epochs: int | None = None,
    seed: int = 0,
    small: bool = False,
    report: Report | None = None,
) -> TrainedModel:
    """Generate the data of model ``name`` and train it (seeded), reporting each epoch."""
    spec = get_model(name)
    quiet_tensorflow()
    report = report or _no_report
    n_epochs = spec.default_epochs if epochs is None else epochs
    if n_epochs < 0:
        raise ValueError("epochs must be zero or more")
    report("data", 0, 1)
    data = spec.dataset(seed, small=small)
    report("data", 1, 1)
    model = spec.build(seed)
    start = time.perf_counter()
    report("train", 0, n_epochs)
    if n_epochs:
        spec.fit(model, data, n_epochs, seed, [_EpochReport(report, n_epochs)])
    return TrainedModel(
        spec, model, data, seed, n_epochs, small, train_seconds=time.perf_counter() - start
    )


def from_weights(
    name: str, weights: list[Array], *, seed: int = 0, small: bool = False, epochs: int = 0
) -> TrainedModel:
    """A :class:`TrainedModel` whose weights come from elsewhere (on-device or federated)."""
    spec = get_model(name)
    quiet_tensorflow()
    model = spec.build(seed)
    model.set_weights(weights)
    return TrainedModel(spec, model, spec.dataset(seed, small=small), seed, epochs, small)


def load_trained(directory: Path) -> TrainedModel:
    """Rebuild a model saved by :meth:`TrainedModel.save` (data is regenerated from the seed)."""
    meta = json.loads((directory / META_FILE).read_text())
    quiet_tensorflow()
    spec = get_model(meta["name"])
    model = spec.build(meta["seed"])
    model.load_weights(str(directory / WEIGHTS_FILE))
    data = spec.dataset(meta["seed"], small=meta["small"])
    return TrainedModel(
        spec,
        model,
        data,
        meta["seed"],
        meta["epochs"],
        meta["small"],
        train_seconds=meta["train_seconds"],
        workdir=directory / "convert",
    )
