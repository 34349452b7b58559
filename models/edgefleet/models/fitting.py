"""Seeded Keras training shared by the zoo's models."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgefleet.models.base import Array


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and the Keras backend so a build is repeatable."""
    from edgefleet.models.tfquiet import import_keras

    keras = import_keras()

    keras.utils.set_random_seed(seed)


def fit_keras(
    model: Any,
    x: Array,
    y: Array | np.ndarray[Any, Any],
    *,
    epochs: int,
    seed: int,
    callbacks: list[Any],
    batch_size: int = 32,
) -> None:
    """``model.fit`` with a seeded shuffle, quiet output and the caller's callbacks."""
    seed_everything(seed)
    model.fit(
        x, y, epochs=epochs, batch_size=batch_size, shuffle=True, verbose=0, callbacks=callbacks
    )
