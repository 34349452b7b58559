"""The plug-in seam of the zoo: what a reference model provides, and its data."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from edgefleet.protocol.manifest import Postprocessing, Preprocessing

Array = npt.NDArray[np.float32]
Task = Literal["classify", "anomaly"]


@dataclass(frozen=True, eq=False)
class Dataset:
    """Model-ready arrays: train and held-out splits plus calibration inputs for int8.

    ``x_*`` are exactly what the exported model takes (already standardised and shaped).
    ``y_test`` holds class indices for classifiers and 0/1 (normal/anomalous) for anomaly models.
    ``x_val`` (anomaly models) holds normal inputs of devices in neither split: the threshold
    is set there, so the held-out split still tests it.
    """

    x_train: Array
    y_train: npt.NDArray[np.int64] | None
    x_test: Array
    y_test: npt.NDArray[np.int64]
    x_calib: Array
    preprocessing: Preprocessing
    source: str
    extra: dict[str, Any] = field(default_factory=dict)
    x_val: Array | None = None

    def __post_init__(self) -> None:
        if len(self.x_test) != len(self.y_test):
            raise ValueError("x_test and y_test differ in length")
        if self.y_train is not None and len(self.y_train) != len(self.x_train):
            raise ValueError("x_train and y_train differ in length")
        if len(self.x_calib) == 0 or len(self.x_train) == 0:
            raise ValueError("a dataset needs training and calibration inputs")


class ReferenceModel(Protocol):
    """A zoo model: Keras definition, data, training, evaluation and how devices read it.

    Implementations import TensorFlow/Keras inside their methods only, so listing the zoo
    stays cheap. ``build`` returns the model that trains; ``inference`` wraps it into the
    model that is exported (for the autoencoder it appends the anomaly score).
    """

    name: str
    task: Task
    summary: str
    labels: tuple[str, ...]
    default_epochs: int
    # TFLite ops kept float32 in the int8 variant (empty: quantize everything).
    float_ops: tuple[str, ...]

    def dataset(self, seed: int, *, small: bool = False) -> Dataset:
        """Seeded training, held-out and calibration data."""
        ...

    def build(self, seed: int) -> Any:
        """A fresh, compiled Keras model (the one that trains)."""
        ...

    def fit(self, model: Any, data: Dataset, epochs: int, seed: int, callbacks: list[Any]) -> None:
        """Train ``model`` on ``data`` in place."""
        ...

    def inference(self, model: Any) -> Any:
        """The Keras model to export: float input, the output the device reads."""
        ...

    def postprocessing(self, scores_on_normal: Array) -> Postprocessing:
        """How the device reads the output; anomaly models set the threshold from ``x_val``."""
        ...

    def evaluate(self, outputs: Array, data: Dataset) -> dict[str, float]:
        """Task metrics (accuracy, or ROC AUC of the score) of held-out outputs."""
        ...

    def card_notes(self) -> str:
        """Model-specific markdown for the model card: data, intended use, limits."""
        ...
