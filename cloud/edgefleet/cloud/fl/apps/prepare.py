"""Prepare a run directory: trainable model, initial weights, holdout, simulation partitions."""

from __future__ import annotations

import json
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edgefleet.cloud.fl.errors import FlSettingsError
from edgefleet.cloud.fl.settings import RunSettings
from edgefleet.models.base import Dataset
from edgefleet.models.trainable.builder import build_trainable
from edgefleet.models.trainable.reference import Array, check_keras_weights
from edgefleet.models.trainable.spec import TrainableSpec, spec_from_keras
from edgefleet.models.zoo import get_model

# The agent's training buffer table (edge/edgefleet/edge/outbox.py); simulated clients read
# files with exactly this table, so the same ClientApp code path serves both.
TRAINING_TABLE = """
CREATE TABLE IF NOT EXISTS training_samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    t REAL NOT NULL,
    model TEXT NOT NULL,
    x BLOB NOT NULL,
    y BLOB
);
"""


@dataclass(frozen=True, slots=True, eq=False)
class Prepared:
    """What :func:`prepare_run` produced."""

    spec: TrainableSpec
    initial: list[Array]
    data: Dataset

    def holdout(self) -> dict[str, float]:
        """Holdout metrics of the initial weights: where round 1 starts from."""
        from edgefleet.cloud.fl.apps.rounds import holdout_metrics

        return holdout_metrics(self.spec, self.initial, self.data.x_test, self.data.y_test)


def prepare_run(settings: RunSettings, initial: list[Array] | None = None) -> Prepared:
    """Write spec, trainable ``.tflite``, initial weights and holdout into the run directory.

    ``initial`` is where the run starts: the whole Keras model's float weights of a
    registered version (see :mod:`edgefleet.cloud.fl.runs.origin`); without it the weights of a
    freshly built (seeded) Keras model are used. The trainable model is built here for
    every run, so it always has the current signatures (FedProx's ``mu`` included). A model
    with a frozen base (``activity``) freezes the base of ``initial`` (kept in ``spec.json``)
    and exchanges only its head: ``initial.npz`` and ``Prepared.initial`` are the head's.
    """
    ref = get_model(settings.model)
    keras_model = ref.build(settings.seed)
    if initial is not None:
        # The spec reads a frozen base's weights from the model: the parent's, not fresh ones.
        blank = spec_from_keras(ref.name, ref.task, keras_model)
        keras_model.set_weights(check_keras_weights(blank, initial))
    spec = spec_from_keras(ref.name, ref.task, keras_model)
    weights = spec.head_weights(keras_model.get_weights())
    root = settings.root
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgefleet-trainable-") as tmp:
        settings.trainable_path.write_bytes(build_trainable(spec, weights, Path(tmp)))
    settings.spec_path.write_text(json.dumps(spec.to_json()))
    np.savez(settings.initial_path, *weights)
    data = ref.dataset(settings.seed, small=True)
    np.savez(settings.holdout_path, x=data.x_test, y=data.y_test)
    return Prepared(spec, weights, data)


def write_buffer(path: Path, model: str, x: Array, y: npt.NDArray[np.int64] | None) -> Path:
    """A SQLite file with a ``training_samples`` table holding ``x`` (and labels ``y``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    try:
        db.executescript(TRAINING_TABLE)
        rows = [
            (
                float(i),
                model,
                np.ascontiguousarray(x[i], "<f4").tobytes(),
                None if y is None else np.array([y[i]], "<i8").tobytes(),
            )
            for i in range(len(x))
        ]
        db.executemany("INSERT INTO training_samples (t, model, x, y) VALUES (?, ?, ?, ?)", rows)
        db.commit()
    finally:
        db.close()
    return path


def dirichlet_partitions(
    y: npt.NDArray[np.int64] | None, n: int, clients: int, alpha: float | None, seed: int
) -> list[npt.NDArray[np.int64]]:
    """Row indices per client: IID, or label-skewed with Dirichlet(``alpha``) per class.

    Every client gets at least one row. Unlabelled data (``y`` None) is split IID.
    """
    if clients < 1 or clients > n:
        raise FlSettingsError(f"cannot split {n} samples over {clients} clients")
    rng = np.random.default_rng(seed)
    if alpha is None or y is None:
        return [np.sort(p) for p in np.array_split(rng.permutation(n), clients)]
    if alpha <= 0:
        raise FlSettingsError("--non-iid ALPHA must be positive")
    parts: list[list[int]] = [[] for _ in range(clients)]
    for label in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == label))
        shares = rng.dirichlet(np.full(clients, alpha))
        cuts = (np.cumsum(shares) * len(rows)).astype(int)[:-1]
        for c, chunk in enumerate(np.split(rows, cuts)):
            parts[c].extend(chunk.tolist())
    # A client Dirichlet left empty borrows a row from the largest one.
    for c in range(clients):
        if not parts[c]:
            donor = max(range(clients), key=lambda k: len(parts[k]))
            parts[c].append(parts[donor].pop())
    return [np.sort(np.array(p, np.int64)) for p in parts]


def write_partitions(
    data_dir: Path,
    model: str,
    data: Dataset,
    clients: int,
    *,
    alpha: float | None,
    seed: int,
) -> list[int]:
    """One ``client-<i>.db`` per virtual client; returns each client's sample count."""
    parts = dirichlet_partitions(data.y_train, len(data.x_train), clients, alpha, seed)
    for i, rows in enumerate(parts):
        y = None if data.y_train is None else data.y_train[rows]
        write_buffer(data_dir / f"client-{i}.db", model, data.x_train[rows], y)
    return [len(p) for p in parts]
