"""Train a trainable ``.tflite`` with LiteRT's signature runners: no TensorFlow on the device."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet.edge.fl.errors import BadUpdate, NoTrainingData, TrainableModelError

Array = npt.NDArray[np.float32]
Labels = npt.NDArray[np.int64]
REQUIRED = ("init", "train", "evaluate", "infer", "get_weights", "set_weights")


@dataclass(frozen=True, slots=True)
class FitResult:
    """What one local training run did: examples, loss before and after, seconds, steps."""

    examples: int
    loss_before: float
    loss_after: float
    seconds: float
    steps: int


def _interpreter(model: bytes, threads: int) -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as exc:  # pragma: no cover - ai-edge-litert is an edge dependency
        raise TrainableModelError(f"ai-edge-litert is not installed: {exc}") from None
    try:
        return Interpreter(model_content=model, num_threads=threads)
    except (ValueError, RuntimeError) as exc:
        raise TrainableModelError(f"the trainable model does not load: {exc}") from None


class LiteRTTrainer:
    """A trainable model in one LiteRT interpreter; use it from one thread.

    The model's variables are initialised by its ``init`` signature on construction (reading
    them earlier returns garbage); weights come and go in Keras order. :meth:`set_weights`
    also anchors FedProx's proximal term at those weights (the round's global weights).
    Models built before FedProx support (no ``mu`` input) still load and train plain SGD.
    """

    def __init__(self, model: bytes, *, threads: int = 1) -> None:
        self._interp = _interpreter(model, threads)
        sigs = self._interp.get_signature_list()
        missing = [s for s in REQUIRED if s not in sigs]
        if missing:
            raise TrainableModelError(f"the model lacks the signatures {', '.join(missing)}")
        self._run = {s: self._interp.get_signature_runner(s) for s in REQUIRED}
        self.labelled = "y" in sigs["train"]["inputs"]
        self.proximal = "mu" in sigs["train"]["inputs"]
        x = self._run["train"].get_input_details()["x"]
        self.batch, self.input_dim = int(x["shape"][0]), int(x["shape"][1])
        self._names = sorted(sigs["set_weights"]["inputs"])
        self._run["init"]()

    def get_weights(self) -> list[Array]:
        """Current weights, Keras order."""
        out = self._run["get_weights"]()
        return [np.array(out[k], dtype=np.float32) for k in self._names]

    def set_weights(self, weights: Sequence[Array]) -> None:
        """Replace every weight (shapes must match); they become the proximal anchor too."""
        if len(weights) != len(self._names):
            raise BadUpdate(f"expected {len(self._names)} weight arrays, got {len(weights)}")
        details = self._run["set_weights"].get_input_details()
        feeds = {}
        for k, w in zip(self._names, weights, strict=True):
            want = tuple(int(d) for d in details[k]["shape"])
            if tuple(w.shape) != want:
                raise BadUpdate(f"weight {k} has shape {tuple(w.shape)}, the model wants {want}")
            feeds[k] = np.ascontiguousarray(w, dtype=np.float32)
        self._run["set_weights"](**feeds)

    def _batches(
        self, x: Array, y: Labels | None, order: npt.NDArray[np.int64]
    ) -> list[dict[str, Any]]:
        if x.ndim > 2:
            # Windows (n, steps, channels) of a frozen-base model: the model takes them flat.
            x = x.reshape(len(x), -1)
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise NoTrainingData(
                f"samples have shape {x.shape[1:]}, the model takes {self.input_dim}"
            )
        if self.labelled and y is None:
            raise NoTrainingData("this model trains on labelled samples; the buffer has none")
        out = []
        for start in range(0, len(order), self.batch):
            idx = order[start : start + self.batch]
            n = len(idx)
            # Pad the last batch to the fixed size; the mask keeps padding out of the loss.
            xb = np.zeros((self.batch, self.input_dim), np.float32)
            xb[:n] = x[idx]
            mask = np.zeros(self.batch, np.float32)
            mask[:n] = 1.0
            feed: dict[str, Any] = {"x": xb, "mask": mask}
            if self.labelled:
                assert y is not None
                yb = np.zeros(self.batch, np.int32)
                yb[:n] = y[idx]
                feed["y"] = yb
            out.append(feed)
        return out

    def evaluate(self, x: Array, y: Labels | None = None) -> float:
        """Mean loss over ``x`` without changing the weights."""
        if len(x) == 0:
            raise NoTrainingData("no samples to evaluate")
        total = 0.0
        for feed in self._batches(x, y, np.arange(len(x))):
            n = float(feed["mask"].sum())
            total += float(self._run["evaluate"](**feed)["loss"]) * n
        return total / len(x)

    def predict(self, x: Array) -> Array:
        """The model's output (probabilities or anomaly score) for every row of ``x``."""
        rows = []
        for feed in self._batches(
            x, None if not self.labelled else np.zeros(len(x), np.int64), np.arange(len(x))
        ):
            n = int(feed["mask"].sum())
            rows.append(np.asarray(self._run["infer"](x=feed["x"])["output"])[:n])
        return np.concatenate(rows).astype(np.float32)

    def fit(
        self,
        x: Array,
        y: Labels | None = None,
        *,
        epochs: int = 1,
        lr: float = 0.05,
        seed: int = 0,
        mu: float = 0.0,
        between_batches: Callable[[], None] | None = None,
    ) -> FitResult:
        """Train ``epochs`` passes of shuffled fixed-size batches; refuse a NaN result.

        ``mu`` > 0 adds FedProx's proximal term ``mu/2 * ||w - anchor||^2`` (the anchor is
        what :meth:`set_weights` last set). ``between_batches`` runs after every step: the
        place where training yields to inference or stops for the device policy.
        """
        if len(x) == 0:
            raise NoTrainingData("the training buffer is empty")
        if not (np.isfinite(mu) and mu >= 0):
            raise TrainableModelError(f"the proximal mu must be finite and >= 0, not {mu}")
        if mu > 0 and not self.proximal:
            raise TrainableModelError(
                "the server asks for FedProx (proximal-mu > 0) but this trainable model has no "
                "proximal term (built before FedProx support): rebuild it with this version"
            )
        extra: dict[str, Any] = {"mu": np.float32(mu)} if self.proximal else {}
        start = time.perf_counter()
        before = self.evaluate(x, y)
        rng = np.random.default_rng(seed)
        steps = 0
        lr_arr = np.float32(lr)
        for _ in range(max(0, epochs)):
            for feed in self._batches(x, y, rng.permutation(len(x))):
                self._run["train"](**feed, lr=lr_arr, **extra)
                steps += 1
                if between_batches is not None:
                    between_batches()
        after = self.evaluate(x, y)
        if not np.isfinite(after):
            raise BadUpdate(f"training diverged (loss {after}); the update is not sent")
        for w in self.get_weights():
            if not np.isfinite(w).all():
                raise BadUpdate("training produced non-finite weights; the update is not sent")
        return FitResult(len(x), before, after, time.perf_counter() - start, steps)
