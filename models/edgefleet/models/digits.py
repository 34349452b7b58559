"""``digits``: an all-dense MLP on scikit-learn's bundled 8x8 handwritten digits."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgefleet.models.base import Dataset
from edgefleet.models.classifier import SoftmaxClassifier
from edgefleet.models.fitting import seed_everything
from edgefleet.protocol.manifest import Preprocessing

PIXELS = 64
# load_digits pixels are 0..16; the graph rescales, so the device feeds them raw.
PIXEL_MAX = 16.0


class Digits(SoftmaxClassifier):
    """Dense 64-128-64-10 softmax MLP; all-dense so LiteRT can train it on devices."""

    name = "digits"
    summary = "All-dense MLP on scikit-learn's 8x8 handwritten digits (real data, no download)."
    labels: tuple[str, ...] = tuple(str(d) for d in range(10))
    float_ops: tuple[str, ...] = ()
    default_epochs = 40

    def dataset(self, seed: int, *, small: bool = False) -> Dataset:
        """A stratified 80/20 split of the 1,797 digits (the dataset is small either way)."""
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        bunch = load_digits()
        x = bunch.data.astype(np.float32)
        y = bunch.target.astype(np.int64)
        x_train, x_test, y_train, y_test = train_test_split(
            x, y, test_size=0.2, random_state=seed, stratify=y
        )
        rng = np.random.default_rng(seed)
        calib = x_train[rng.choice(len(x_train), 300, replace=False)]
        return Dataset(
            x_train=x_train,
            y_train=y_train,
            x_test=x_test,
            y_test=y_test,
            x_calib=calib,
            preprocessing=Preprocessing(kind="none"),
            source=f"sklearn.datasets.load_digits, stratified 80/20 split, seed {seed}",
        )

    def build(self, seed: int) -> Any:
        """The MLP with an in-graph 1/16 rescale and a softmax output."""
        from edgefleet.models.tfquiet import import_keras

        keras = import_keras()

        seed_everything(seed)
        inp = keras.Input((PIXELS,), name="pixels")
        x = keras.layers.Rescaling(1.0 / PIXEL_MAX)(inp)
        x = keras.layers.Dense(128, activation="relu")(x)
        x = keras.layers.Dense(64, activation="relu")(x)
        out = keras.layers.Dense(10, activation="softmax", name="probs")(x)
        model = keras.Model(inp, out, name="digits_mlp")
        return self.compile(model)

    def card_notes(self) -> str:
        """Data, use and limits of the digits MLP."""
        return (
            "Input: 64 raw pixel intensities (0..16) of an 8x8 image, row-major, shape "
            "(1, 64); the graph rescales them.\n"
            "Output: `probs`, softmax over the digits 0-9.\n"
            "Training data: scikit-learn's bundled copy of the UCI optical handwritten digits "
            "(1,797 images from 43 writers), stratified 80/20 split.\n"
            "Limits: tiny, low-resolution images; this model is a reference for comparing "
            "federated with centralised training, not a production OCR."
        )
