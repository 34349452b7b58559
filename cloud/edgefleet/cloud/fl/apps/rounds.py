"""The server's round loop: quorum with a deadline, Flower's aggregation, holdout evaluation, a log.

It replaces :meth:`flwr.serverapp.strategy.Strategy.start` because that loop waits forever
for ``min_available_nodes`` and has no notion of a skipped round.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from edgefleet.cloud.fl.settings import RunSettings
from edgefleet.models.trainable import reference
from edgefleet.models.trainable.spec import TrainableSpec

Array = reference.Array


@dataclass(frozen=True, slots=True)
class RoundRecord:
    """What one round did: who took part, what failed, losses, holdout metrics, time."""

    round: int
    status: str  # "aggregated" | "skipped"
    reason: str
    connected: int
    sampled: int
    replies: int
    failures: int
    examples: int
    client_loss_before: float | None
    client_loss_after: float | None
    holdout: dict[str, float] = field(default_factory=dict)
    train_seconds_max: float = 0.0
    seconds: float = 0.0
    at: float = 0.0

    def to_json(self) -> str:
        """One JSON line."""
        return json.dumps(asdict(self), sort_keys=True)


def holdout_metrics(
    spec: TrainableSpec, weights: Sequence[Array], x: Array, y: np.ndarray[Any, Any]
) -> dict[str, float]:
    """Loss on holdout data, and accuracy (classifiers) or ROC AUC (autoencoders, y = 0/1)."""
    if spec.loss == "sparse_ce":
        p = reference.forward(spec, weights, x)
        return {
            "loss": reference.loss(spec, weights, x, y.astype(np.int64)),
            "accuracy": float((p.argmax(axis=-1) == y).mean()),
        }
    score = reference.outputs(spec, weights, x).reshape(-1)
    normal = score[y == 0]
    out = {"loss": float(normal.mean())}
    if (y == 1).any() and (y == 0).any():
        from scipy.stats import mannwhitneyu

        u = mannwhitneyu(score[y == 1], normal).statistic
        out["roc_auc"] = float(u / ((y == 1).sum() * (y == 0).sum()))
    return out


def _mean(replies: list[Message], key: str) -> float | None:
    vals, weights = [], []
    for m in replies:
        rec = m.content.metric_records.get("metrics")
        if rec is not None and key in rec:
            vals.append(float(rec[key]))  # type: ignore[arg-type]
            weights.append(float(rec.get("num-examples", 1.0)))  # type: ignore[arg-type]
    return float(np.average(vals, weights=weights)) if vals else None


class RoundRunner:
    """Run ``settings.rounds`` rounds on ``grid``; append a :class:`RoundRecord` per round."""

    def __init__(
        self,
        settings: RunSettings,
        strategy: Strategy,
        spec: TrainableSpec,
        trainable: bytes,
        holdout: tuple[Array, np.ndarray[Any, Any]],
        *,
        on_round: Callable[[RoundRecord], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.strategy = strategy
        self.spec = spec
        self.trainable = trainable
        self.holdout = holdout
        self.on_round = on_round
        self.clock = clock
        self.records: list[RoundRecord] = []
        self.participants: set[int] = set()

    def _wait_quorum(self, grid: Grid) -> int:
        deadline = self.clock() + self.settings.quorum_timeout_s
        while True:
            n = len(list(grid.get_node_ids()))
            if n >= self.settings.min_clients or self.clock() >= deadline:
                return n
            time.sleep(0.2)

    def _config(self, server_round: int) -> ConfigRecord:
        return ConfigRecord(round_config(self.settings, self.trainable))

    def _record(self, rec: RoundRecord) -> None:
        self.records.append(rec)
        with self.settings.rounds_path.open("a") as fh:
            fh.write(rec.to_json() + "\n")
        if self.on_round is not None:
            self.on_round(rec)

    def run_round(self, grid: Grid, server_round: int, arrays: ArrayRecord) -> ArrayRecord:
        """One round; returns the new global arrays (the old ones when skipped)."""
        s = self.settings
        start = self.clock()
        connected = self._wait_quorum(grid)
        skipped = {
            "round": server_round,
            "status": "skipped",
            "connected": connected,
            "examples": 0,
            "client_loss_before": None,
            "client_loss_after": None,
        }
        if connected < s.min_clients:
            self._record(
                RoundRecord(
                    reason=f"quorum not reached: {connected} of {s.min_clients} clients connected",
                    sampled=0,
                    replies=0,
                    failures=0,
                    seconds=self.clock() - start,
                    at=time.time(),
                    **skipped,  # type: ignore[arg-type]
                )
            )
            return arrays
        messages = list(
            self.strategy.configure_train(server_round, arrays, self._config(server_round), grid)
        )
        replies = list(grid.send_and_receive(messages, timeout=s.round_timeout_s))
        good = [m for m in replies if not m.has_error()]
        failures = len(messages) - len(good)
        if len(good) < s.min_clients:
            reasons = sorted({str(m.error.reason) for m in replies if m.has_error()})
            self._record(
                RoundRecord(
                    reason=(
                        f"quorum not reached: {len(good)} of {s.min_clients} replies before the "
                        f"{s.round_timeout_s:.0f} s deadline"
                        + (f" ({'; '.join(reasons)[:300]})" if reasons else "")
                    ),
                    sampled=len(messages),
                    replies=len(good),
                    failures=failures,
                    seconds=self.clock() - start,
                    at=time.time(),
                    **skipped,  # type: ignore[arg-type]
                )
            )
            return arrays
        new_arrays, _ = self.strategy.aggregate_train(server_round, good)
        if new_arrays is None:
            self._record(
                RoundRecord(
                    reason="the strategy returned no aggregate",
                    sampled=len(messages),
                    replies=len(good),
                    failures=failures,
                    seconds=self.clock() - start,
                    at=time.time(),
                    **skipped,  # type: ignore[arg-type]
                )
            )
            return arrays
        weights = new_arrays.to_numpy_ndarrays()
        self.participants.update(m.metadata.src_node_id for m in good)
        x, y = self.holdout
        train_s = [_mean([m], "train-seconds") or 0.0 for m in good]
        self._record(
            RoundRecord(
                round=server_round,
                status="aggregated",
                reason="",
                connected=connected,
                sampled=len(messages),
                replies=len(good),
                failures=failures,
                examples=int(sum(_mean([m], "num-examples") or 0 for m in good)),
                client_loss_before=_mean(good, "loss-before"),
                client_loss_after=_mean(good, "loss-after"),
                holdout=holdout_metrics(self.spec, weights, x, y),
                train_seconds_max=max(train_s, default=0.0),
                seconds=self.clock() - start,
                at=time.time(),
            )
        )
        return new_arrays

    def run(self, grid: Grid, initial: Sequence[Array]) -> list[Array]:
        """Every round, then the final weights (also saved to ``settings.result_path``)."""
        arrays = ArrayRecord([np.asarray(w, np.float32) for w in initial])
        for r in range(1, self.settings.rounds + 1):
            arrays = self.run_round(grid, r, arrays)
        weights = [np.asarray(w, np.float32) for w in arrays.to_numpy_ndarrays()]
        aggregated = sum(r.status == "aggregated" for r in self.records)
        save_result(self.settings, weights, len(self.participants), aggregated)
        return weights


def round_config(settings: RunSettings, trainable: bytes) -> dict[str, Any]:
    """What every device reads from a round's config (one place for every server path)."""
    cfg: dict[str, Any] = {
        "model": settings.model,
        "trainable": trainable,
        "epochs": settings.epochs,
        "lr": settings.lr,
        "seed": settings.seed,
        "max-samples": settings.max_samples,
        # Devices end their on-demand SuperNode after the last round (docs/federated.md).
        "rounds": settings.rounds,
    }
    if settings.data_dir:
        cfg["data-dir"] = settings.data_dir
    cfg.update(settings.dp.client_config())
    return cfg


def save_result(
    settings: RunSettings, weights: list[Array], participants: int, aggregated: int
) -> None:
    """Write the final weights and the summary :func:`.outcome.collect` reads."""
    np.savez(settings.result_path, *weights)
    summary = {"participants": participants, "aggregated_rounds": aggregated}
    (settings.root / "summary.json").write_text(json.dumps(summary))


def read_rounds(path: Path) -> list[dict[str, Any]]:
    """The round records written so far."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_weights(path: Path) -> list[Array]:
    """Weights saved with ``np.savez(path, *weights)``, in order."""
    with np.load(path) as data:
        return [np.asarray(data[f"arr_{i}"], np.float32) for i in range(len(data.files))]
