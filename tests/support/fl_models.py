"""Trainable LiteRT models of the zoo, built once per test session."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.models.trainable.builder import build_trainable
from edgefleet.models.trainable.spec import TrainableSpec, spec_from_keras
from edgefleet.models.zoo import get_model


@dataclass(frozen=True)
class BuiltTrainable:
    """A zoo model's Keras build, its trainable spec, and the trainable ``.tflite`` bytes."""

    name: str
    keras_model: Any
    spec: TrainableSpec
    weights: list[np.ndarray]
    tflite: bytes


def build(name: str, seed: int = 0, batch: int = 32) -> BuiltTrainable:
    """Build the Keras model (seeded) and convert its trainable variant."""
    ref = get_model(name)
    model = ref.build(seed)
    spec = spec_from_keras(name, ref.task, model, batch=batch)
    weights = [np.asarray(w, np.float32) for w in model.get_weights()]
    with tempfile.TemporaryDirectory() as tmp:
        data = build_trainable(spec, weights, Path(tmp))
    return BuiltTrainable(name, model, spec, weights, data)
