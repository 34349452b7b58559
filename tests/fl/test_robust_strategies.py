"""NaN and scaled-up updates: Krum and trimmed mean reject them, FedAvg (the control) is hurt."""

from __future__ import annotations

import time

import numpy as np
import pytest
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.common import Metadata

from edgefleet.cloud.fl.apps.strategies import make_strategy
from edgefleet.cloud.fl.settings import RunSettings


def _replies(updates: list[list[np.ndarray]]) -> list[Message]:
    out = []
    for i, arrays in enumerate(updates):
        # A reply as the SuperLink hands it to the ServerApp (src = the client's node).
        meta = Metadata(
            run_id=1,
            message_id="",
            src_node_id=i + 1,
            dst_node_id=0,
            reply_to_message_id=f"ask-{i}",
            group_id="1",
            created_at=time.time(),
            ttl=60.0,
            message_type="train",
        )
        content = RecordDict(
            {"arrays": ArrayRecord(arrays), "metrics": MetricRecord({"num-examples": 100})}
        )
        out.append(Message(content=content, metadata=meta))
    return out


def _honest(rng: np.random.Generator, n: int) -> list[list[np.ndarray]]:
    base = [np.ones((8, 4), np.float32), np.zeros(4, np.float32)]
    return [[w + rng.normal(0, 0.01, w.shape).astype(np.float32) for w in base] for _ in range(n)]


def _aggregate(strategy: str, updates: list[list[np.ndarray]]) -> list[np.ndarray]:
    settings = RunSettings(
        model="digits",
        rounds=1,
        min_clients=5,
        workdir="/nonexistent",
        strategy=strategy,
        num_malicious=1,
        trim_beta=0.2,
    )
    arrays, _ = make_strategy(settings).aggregate_train(1, _replies(updates))
    assert arrays is not None
    return arrays.to_numpy_ndarrays()


ATTACKS = {
    "nan": lambda w: [np.full_like(a, np.nan) for a in w],
    "scaled": lambda w: [a * 1000.0 for a in w],
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_robust_strategies_reject_a_bad_client(attack):
    rng = np.random.default_rng(0)
    honest = _honest(rng, 4)
    updates = [*honest, ATTACKS[attack](honest[0])]
    mean = [np.mean([u[i] for u in honest], axis=0) for i in range(2)]

    def error(agg: list[np.ndarray]) -> float:
        return float(max(np.max(np.abs(a - m)) for a, m in zip(agg, mean, strict=True)))

    # np.median propagates NaN: FedMedian withstands scaling, not NaN (docs/federated.md).
    robust_set = (
        ("krum", "fedtrimmedavg") if attack == "nan" else ("krum", "fedtrimmedavg", "fedmedian")
    )
    for robust in robust_set:
        agg = _aggregate(robust, updates)
        assert all(np.isfinite(a).all() for a in agg), robust
        assert error(agg) < 0.1, robust
    control = _aggregate("fedavg", updates)
    hurt = not all(np.isfinite(a).all() for a in control) or error(control) > 10
    assert hurt, "FedAvg should be hurt by the bad client (control)"
