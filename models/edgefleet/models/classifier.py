"""What the zoo's softmax classifiers share: compile, fit, read-out and accuracy."""

from __future__ import annotations

from typing import Any

from edgefleet.models.base import Array, Dataset, Task
from edgefleet.models.fitting import fit_keras
from edgefleet.protocol.manifest import Postprocessing


class SoftmaxClassifier:
    """Base of zoo classifiers whose Keras model ends in a softmax the device reads directly."""

    task: Task = "classify"
    # A label is named only above this confidence; below it the device reports no label.
    min_confidence = 0.5

    @staticmethod
    def compile(model: Any, learning_rate: float = 3e-3) -> Any:
        """Compile ``model`` for integer class labels with Adam."""
        from edgefleet.models.tfquiet import import_keras

        keras = import_keras()

        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        return model

    def fit(self, model: Any, data: Dataset, epochs: int, seed: int, callbacks: list[Any]) -> None:
        """Supervised training on the labelled training split."""
        assert data.y_train is not None
        fit_keras(model, data.x_train, data.y_train, epochs=epochs, seed=seed, callbacks=callbacks)

    def inference(self, model: Any) -> Any:
        """The classifier itself: its softmax is what the device reads."""
        return model

    def postprocessing(self, scores_on_normal: Array) -> Postprocessing:
        """Argmax label, named only above :attr:`min_confidence`."""
        return Postprocessing(kind="classify", threshold=self.min_confidence)

    def evaluate(self, outputs: Array, data: Dataset) -> dict[str, float]:
        """Top-1 accuracy on the held-out split."""
        return {"accuracy": float((outputs.argmax(axis=-1) == data.y_test).mean())}
