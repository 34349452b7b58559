"""``vibration-anomaly``: a dense autoencoder over standardised 3-axis vibration windows.

Unsupervised, so every device can train it on its own (normal) data in federated rounds. The
exported graph appends the anomaly score, the mean squared reconstruction error of the window,
so the device reads one number and compares it with the manifest's threshold. All layers are
dense with builtin ops, so LiteRT can train it on the device.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgefleet.models.base import Array, Dataset, Task
from edgefleet.models.fitting import fit_keras, seed_everything
from edgefleet.models.windows import channel_stats, sliding_windows, standardize
from edgefleet.protocol.manifest import Postprocessing, Preprocessing
from edgefleet.signals import Drift, make_signal

RATE_HZ = 400.0
WINDOW = 64
HOP = 32
CHANNELS = ["ax", "ay", "az"]
# A window scoring above this quantile of normal validation windows is an anomaly.
THRESHOLD_QUANTILE = 0.995


def _device_windows(seed: int, n_windows: int, drift: Drift | None = None) -> Array:
    sig = make_signal("vibration", seed, rate_hz=RATE_HZ)
    sig.set_drift(drift)
    return sliding_windows(sig.read(WINDOW + HOP * (n_windows - 1)), WINDOW, HOP)


class VibrationAnomaly:
    """Dense autoencoder 192-64-16-64-192 whose exported output is the anomaly score."""

    name = "vibration-anomaly"
    task: Task = "anomaly"
    summary = "Dense autoencoder on 3-axis vibration windows; outputs an anomaly score."
    labels: tuple[str, ...] = ()
    default_epochs = 30
    # The int8 body ends in a DEQUANTIZE; the score itself is computed in float32.
    float_ops: tuple[str, ...] = ("SQUARED_DIFFERENCE", "SUB", "SQUARE", "MUL", "MEAN")

    def dataset(self, seed: int, *, small: bool = False) -> Dataset:
        """Normal windows of training devices; held-out devices, normal and with faults.

        ``x_val`` holds normal windows of validation devices (neither training nor held-out)
        for the threshold.
        """
        rng = np.random.default_rng(seed)
        n_train, n_test, per_dev = (24, 3, 48) if small else (64, 4, 80)
        seeds = [int(s) for s in rng.choice(1_000_000, n_train + n_test, replace=False)]
        train = np.concatenate([_device_windows(s, per_dev) for s in seeds[:n_train]])
        mean, std = channel_stats(train)
        normal, faulty = [], []
        for s in seeds[n_train:]:
            normal.append(_device_windows(s + 1, per_dev))
            for magnitude in (0.25, 0.5, 1.0, 2.0):
                # Fault strengths from barely visible to obvious, to rank a real spread.
                faulty.append(_device_windows(s + 1, per_dev // 8, Drift("mode", magnitude)))
        # The threshold is set on normal windows of further devices, in neither split, so the
        # held-out false-alarm rate measures how the threshold carries to devices it never saw.
        taken = set(seeds) | {s + 1 for s in seeds}
        pool = np.random.default_rng((seed, 1)).choice(1_000_000, 4 * n_test, replace=False)
        val_seeds = [int(s) for s in pool if int(s) not in taken][:n_test]
        x_val = np.concatenate([_device_windows(s, per_dev) for s in val_seeds])
        test = np.concatenate(normal + faulty)
        y_test = np.concatenate(
            [np.zeros(sum(map(len, normal)), np.int64), np.ones(sum(map(len, faulty)), np.int64)]
        )
        flat = WINDOW * len(CHANNELS)
        x_train = standardize(train, mean, std).reshape(-1, flat)
        x_test = standardize(test, mean, std).reshape(-1, flat)
        x_val = standardize(x_val, mean, std).reshape(-1, flat)
        calib = x_train[rng.choice(len(x_train), min(300, len(x_train)), replace=False)]
        # Corrupted copies stretch the int8 calibration to scores well above normal, so
        # anomalies do not all saturate at one quantized value (which would tie their ranks).
        noisy = calib[:100] + rng.normal(0, 0.6, calib[:100].shape).astype(np.float32)
        pre = Preprocessing(
            kind="flatten",
            channels=CHANNELS,
            window=WINDOW,
            hop=HOP,
            sample_rate_hz=RATE_HZ,
            mean=mean,
            std=std,
        )
        return Dataset(
            x_train=x_train,
            y_train=None,
            x_test=x_test,
            y_test=y_test,
            x_calib=np.concatenate([calib, noisy]).astype(np.float32),
            preprocessing=pre,
            source=f"edgefleet.signals vibration, {n_train} training devices, seed {seed}",
            x_val=x_val,
        )

    def build(self, seed: int) -> Any:
        """The autoencoder (input -> reconstruction), compiled with MSE."""
        from edgefleet.models.tfquiet import import_keras

        keras = import_keras()

        seed_everything(seed)
        flat = WINDOW * len(CHANNELS)
        inp = keras.Input((flat,), name="window")
        x = keras.layers.Dense(64, activation="relu", name="enc1")(inp)
        x = keras.layers.Dense(16, activation="relu", name="code")(x)
        x = keras.layers.Dense(64, activation="relu", name="dec1")(x)
        out = keras.layers.Dense(flat, name="recon")(x)
        model = keras.Model(inp, out, name="vibration_autoencoder")
        model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="mse")
        return model

    def fit(self, model: Any, data: Dataset, epochs: int, seed: int, callbacks: list[Any]) -> None:
        """Learn to reconstruct normal windows."""
        fit_keras(model, data.x_train, data.x_train, epochs=epochs, seed=seed, callbacks=callbacks)

    def inference(self, model: Any) -> Any:
        """Wrap the autoencoder so its output is the per-window mean squared error."""
        from edgefleet.models.tfquiet import import_keras

        keras = import_keras()

        inp = keras.Input(model.input_shape[1:], name="window")
        err = keras.layers.Subtract(name="residual")([inp, model(inp)])
        score = keras.ops.mean(keras.ops.square(err), axis=-1, keepdims=True)
        return keras.Model(inp, score, name="vibration_anomaly_score")

    def postprocessing(self, scores_on_normal: Array) -> Postprocessing:
        """Threshold at a high quantile of scores on normal validation windows."""
        threshold = float(np.quantile(scores_on_normal.reshape(-1), THRESHOLD_QUANTILE))
        return Postprocessing(kind="anomaly", threshold=threshold)

    def evaluate(self, outputs: Array, data: Dataset) -> dict[str, float]:
        """ROC AUC of the score for telling faulty from normal windows."""
        from sklearn.metrics import roc_auc_score

        return {"roc_auc": float(roc_auc_score(data.y_test, outputs.reshape(-1)))}

    def card_notes(self) -> str:
        """Data, use and limits of the vibration autoencoder."""
        return (
            f"Input: {WINDOW} samples x 3 axes at {RATE_HZ:.0f} Hz, standardised per axis with "
            "the manifest's mean/std and flattened row-major (ax0, ay0, az0, ax1, ...).\n"
            "Output: `score`, the mean squared reconstruction error of the window; above "
            "`postprocessing.threshold` the window is anomalous.\n"
            "Training data: normal windows of simulated motors (edgefleet.signals vibration), "
            "one seed per device, so shaft speed, harmonics, gains and noise differ per device. "
            "Held-out data: unseen devices, normal and with injected bearing faults.\n"
            "Limits: it learns what normal looks like on the training devices; a new machine "
            "type needs retraining on its own normal data (federated rounds do this)."
        )
