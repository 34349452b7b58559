"""``activity``: a small 1D-CNN that tells idle, walk, run and fall from wrist accelerometer."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet.models.base import Array, Dataset
from edgefleet.models.classifier import SoftmaxClassifier
from edgefleet.models.fitting import seed_everything
from edgefleet.models.windows import channel_stats, pure_windows, standardize
from edgefleet.protocol.manifest import Preprocessing
from edgefleet.signals import ACTIVITIES, make_signal

RATE_HZ = 50.0
WINDOW = 64
HOP = 16
CHANNELS = ["ax", "ay", "az"]
# Falls are rare in the simulated fleet; training devices fall often so the class is learnt.
TRAIN_FALL_RATE = 1.5


def _device(seed: int, seconds: float) -> tuple[Array, npt.NDArray[np.int64]]:
    sig = make_signal("activity", seed, rate_hz=RATE_HZ, fall_rate=TRAIN_FALL_RATE)
    samples, labels = sig.read_labeled(int(seconds * RATE_HZ))  # type: ignore[attr-defined]
    return pure_windows(samples, labels, WINDOW, HOP)


class Activity(SoftmaxClassifier):
    """Conv1D(16,5)-Conv1D(32,5)-Conv1D(64,3)-GAP-Dense(32)-softmax(4) over (64, 3) windows."""

    name = "activity"
    summary = "1D-CNN human activity classifier (idle, walk, run, fall) on 3-axis accelerometer."
    labels: tuple[str, ...] = ACTIVITIES
    float_ops: tuple[str, ...] = ()
    default_epochs = 15

    def dataset(self, seed: int, *, small: bool = False) -> Dataset:
        """Label-pure windows from training devices and from unseen held-out devices."""
        rng = np.random.default_rng(seed)
        n_train, n_test, seconds = (6, 3, 150.0) if small else (16, 6, 400.0)
        seeds = [int(s) for s in rng.choice(1_000_000, n_train + n_test, replace=False)]
        parts = [_device(s, seconds) for s in seeds]
        x_train = np.concatenate([p[0] for p in parts[:n_train]])
        y_train = np.concatenate([p[1] for p in parts[:n_train]])
        x_test = np.concatenate([p[0] for p in parts[n_train:]])
        y_test = np.concatenate([p[1] for p in parts[n_train:]])
        mean, std = channel_stats(x_train)
        x_train, x_test = standardize(x_train, mean, std), standardize(x_test, mean, std)
        calib = x_train[rng.choice(len(x_train), min(300, len(x_train)), replace=False)]
        pre = Preprocessing(
            kind="window",
            channels=CHANNELS,
            window=WINDOW,
            hop=HOP,
            sample_rate_hz=RATE_HZ,
            mean=mean,
            std=std,
        )
        return Dataset(
            x_train=x_train,
            y_train=y_train,
            x_test=x_test,
            y_test=y_test,
            x_calib=calib,
            preprocessing=pre,
            source=f"edgefleet.signals activity, {n_train} training devices, seed {seed}",
        )

    def build(self, seed: int) -> Any:
        """The CNN classifier with softmax output, compiled with cross-entropy."""
        from edgefleet.models.tfquiet import import_keras

        keras = import_keras()

        seed_everything(seed)
        inp = keras.Input((WINDOW, len(CHANNELS)), name="window")
        x = keras.layers.Conv1D(16, 5, activation="relu", padding="same")(inp)
        x = keras.layers.MaxPooling1D(2)(x)
        x = keras.layers.Conv1D(32, 5, activation="relu", padding="same")(x)
        x = keras.layers.MaxPooling1D(2)(x)
        x = keras.layers.Conv1D(64, 3, activation="relu", padding="same")(x)
        x = keras.layers.GlobalAveragePooling1D()(x)
        x = keras.layers.Dense(32, activation="relu")(x)
        out = keras.layers.Dense(len(ACTIVITIES), activation="softmax", name="probs")(x)
        model = keras.Model(inp, out, name="activity_cnn")
        return self.compile(model)

    def card_notes(self) -> str:
        """Data, use and limits of the activity classifier."""
        return (
            f"Input: {WINDOW} samples x 3 axes at {RATE_HZ:.0f} Hz (1.28 s), standardised per "
            "axis with the manifest's mean/std, shape (1, 64, 3).\n"
            "Output: `probs`, softmax over idle, walk, run, fall.\n"
            "Training data: simulated wrist accelerometers (edgefleet.signals activity), one "
            "seed per device so orientation, cadence, intensity and noise differ; falls are "
            "over-sampled. Only windows inside one activity are used; held-out devices are "
            "unseen.\n"
            "Limits: synthetic motion; a real deployment should fine-tune on labelled data "
            "from its own sensors and mounting."
        )
