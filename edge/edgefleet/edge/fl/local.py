"""One local training task without Flower: load data, check the policy, train, vet the update."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.edge.fl.buffer import Samples, TrainingBuffer
from edgefleet.edge.fl.errors import BadUpdate, FlConfigError
from edgefleet.edge.fl.policy import (
    DeviceProbe,
    TrainingPolicy,
    lower_priority,
    require_allowed,
    yielder,
)
from edgefleet.edge.fl.trainer import Array, LiteRTTrainer


@dataclass(frozen=True, slots=True)
class TrainTask:
    """What the server asks for in one round (from its config record)."""

    model: str
    trainable: bytes
    epochs: int = 1
    lr: float = 0.05
    seed: int = 0
    max_samples: int = 1000
    server_round: int = 0
    # FedProx's mu (the server's "proximal-mu"); 0 trains plain SGD.
    proximal_mu: float = 0.0

    def __post_init__(self) -> None:
        if not self.trainable:
            raise FlConfigError("the round carries no trainable model")
        if self.epochs < 0 or self.lr <= 0 or self.max_samples < 1:
            raise FlConfigError("epochs >= 0, lr > 0 and max_samples >= 1 are required")
        if not self.proximal_mu >= 0:
            raise FlConfigError(f"proximal-mu must be >= 0, not {self.proximal_mu}")

    @property
    def sha256(self) -> str:
        """Digest of the trainable model, reported back so the server sees what ran."""
        return hashlib.sha256(self.trainable).hexdigest()

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> TrainTask:
        """Read the server's config record (keys documented in docs/federated.md)."""
        try:
            return cls(
                model=str(cfg["model"]),
                trainable=bytes(cfg["trainable"]),
                epochs=int(cfg.get("epochs", 1)),
                lr=float(cfg.get("lr", 0.05)),
                seed=int(cfg.get("seed", 0)),
                max_samples=int(cfg.get("max-samples", 1000)),
                server_round=int(cfg.get("server-round", 0)),
                proximal_mu=float(cfg.get("proximal-mu", 0.0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise FlConfigError(f"bad round config from the server: {exc}") from None


def database_path(node_config: Mapping[str, Any], config: Mapping[str, Any]) -> Path:
    """The agent database to train on: the node's ``db``, or a simulation partition's file.

    In simulation the server's round config names ``data-dir`` and each virtual client
    reads ``client-<partition-id>.db`` there (written by ``edgefleet fl simulate``).
    """
    if "db" in node_config:
        return Path(str(node_config["db"]))
    data_dir = config.get("data-dir")
    if data_dir and "partition-id" in node_config:
        return Path(str(data_dir)) / f"client-{int(node_config['partition-id'])}.db"
    raise FlConfigError("the SuperNode has no `db` in its --node-config (the agent sets it)")


def check_update(weights: Sequence[Array]) -> None:
    """Refuse an empty or non-finite set of weights."""
    if not weights or any(w.size == 0 for w in weights):
        raise BadUpdate("the update is empty")
    if not all(np.isfinite(w).all() for w in weights):
        raise BadUpdate("the update holds NaN or infinite values")


def train_locally(
    task: TrainTask,
    weights: Sequence[Array],
    db: Path,
    policy: TrainingPolicy,
    probe: DeviceProbe,
    *,
    now: datetime | None = None,
) -> tuple[list[Array], dict[str, float]]:
    """Train ``weights`` on the buffered samples of ``db``; return new weights and metrics."""
    require_allowed(policy, probe, now or datetime.now())
    check_update(weights)
    if policy.yield_to_inference:
        lower_priority()
    trainer = LiteRTTrainer(task.trainable)
    trainer.set_weights(weights)
    samples: Samples = TrainingBuffer(db).load(
        task.model, trainer.input_dim, limit=task.max_samples, labelled=trainer.labelled
    )
    result = trainer.fit(
        samples.x,
        samples.y,
        epochs=task.epochs,
        lr=task.lr,
        seed=task.seed + task.server_round,
        mu=task.proximal_mu,
        between_batches=yielder(policy, probe),
    )
    out = trainer.get_weights()
    check_update(out)
    metrics = {
        "num-examples": float(result.examples),
        "loss-before": result.loss_before,
        "loss-after": result.loss_after,
        "train-seconds": result.seconds,
        "steps": float(result.steps),
        "skipped-rows": float(samples.skipped),
    }
    return out, metrics


def evaluate_locally(task: TrainTask, weights: Sequence[Array], db: Path) -> dict[str, float]:
    """Loss of ``weights`` on the buffered samples (no training, no policy check)."""
    check_update(weights)
    trainer = LiteRTTrainer(task.trainable)
    trainer.set_weights(weights)
    samples = TrainingBuffer(db).load(
        task.model, trainer.input_dim, limit=task.max_samples, labelled=trainer.labelled
    )
    return {"num-examples": float(len(samples)), "loss": trainer.evaluate(samples.x, samples.y)}
