"""Read the agent's training buffer from its SQLite file, read-only, beside the running agent.

The agent's outbox is in WAL mode, so a reader here never blocks the agent's single writer
(or its inference loop) and sees the last committed samples. Rows are ``x`` = the model
input as little-endian float32 bytes and ``y`` = the label as one little-endian int64 (or
NULL when the device has no label, as for the autoencoder).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edgefleet.edge.fl.errors import NoTrainingData

X_DTYPE = np.dtype("<f4")
Y_DTYPE = np.dtype("<i8")


@dataclass(frozen=True, slots=True, eq=False)
class Samples:
    """Training inputs (and labels when every kept row has one) plus rows skipped as malformed."""

    x: npt.NDArray[np.float32]
    y: npt.NDArray[np.int64] | None
    skipped: int

    def __len__(self) -> int:
        return len(self.x)


def encode_sample(x: npt.NDArray[np.float32], y: int | None = None) -> tuple[bytes, bytes | None]:
    """The ``(x, y)`` bytes one buffer row holds (what the agent writes)."""
    xb = np.ascontiguousarray(x, X_DTYPE).tobytes()
    return xb, None if y is None else np.array([y], Y_DTYPE).tobytes()


class TrainingBuffer:
    """The ``training_samples`` table of one agent database, opened read-only per read."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def load(
        self, model: str, input_dim: int, *, limit: int = 1000, labelled: bool = False
    ) -> Samples:
        """The newest ``limit`` samples of ``model`` whose input has ``input_dim`` floats.

        ``labelled`` keeps only rows with a label. Raises :class:`NoTrainingData` when the
        database is missing or nothing usable is buffered.
        """
        if not self.path.is_file():
            raise NoTrainingData(f"no agent database at {self.path}")
        try:
            db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5.0)
        except sqlite3.Error as exc:
            raise NoTrainingData(f"cannot open {self.path} read-only: {exc}") from None
        try:
            db.execute("PRAGMA query_only=1")
            rows = db.execute(
                "SELECT x, y FROM training_samples WHERE model = ? ORDER BY id DESC LIMIT ?",
                (model, limit),
            ).fetchall()
        except sqlite3.Error as exc:
            raise NoTrainingData(f"cannot read the training buffer of {self.path}: {exc}") from None
        finally:
            db.close()
        xs: list[npt.NDArray[np.float32]] = []
        ys: list[int | None] = []
        skipped = 0
        for x, y in reversed(rows):
            if len(x) != input_dim * X_DTYPE.itemsize or (y is not None and len(y) != 8):
                skipped += 1
                continue
            if labelled and y is None:
                skipped += 1
                continue
            xs.append(np.frombuffer(x, X_DTYPE).astype(np.float32))
            ys.append(None if y is None else int(np.frombuffer(y, Y_DTYPE)[0]))
        if not xs:
            raise NoTrainingData(
                f"the training buffer holds no usable samples of {model!r} "
                f"({len(rows)} rows, {skipped} malformed or unlabelled)"
            )
        labels = None
        if all(v is not None for v in ys):
            labels = np.array(ys, np.int64)
        return Samples(np.stack(xs), labels, skipped)
