"""Flower strategies by name (a registry, not an if-chain), optionally wrapped for central DP."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    Krum,
    Strategy,
)

from edgefleet.cloud.fl.settings import RunSettings

# Our round loop waits for quorum itself (with a deadline), so Flower's samplers must never
# block: min_available/min_train 0 sample every connected node. Federated evaluation is off:
# the server evaluates on its holdout data, which saves a second message round trip.
_COMMON: dict[str, Any] = {"fraction_evaluate": 0.0, "min_train_nodes": 0, "min_available_nodes": 0}

STRATEGY_FACTORIES: dict[str, Callable[[RunSettings], Strategy]] = {
    "fedavg": lambda s: FedAvg(**_COMMON),
    "fedprox": lambda s: FedProx(proximal_mu=s.proximal_mu, **_COMMON),
    "fedmedian": lambda s: FedMedian(**_COMMON),
    "fedtrimmedavg": lambda s: FedTrimmedAvg(beta=s.trim_beta, **_COMMON),
    "krum": lambda s: Krum(num_malicious_nodes=s.num_malicious, **_COMMON),
}

DP_WRAPPERS: dict[str, Callable[[Strategy, RunSettings], Strategy]] = {
    "none": lambda strategy, s: strategy,
    # Local DP happens on the clients (LocalDpMod, the round config says how much).
    "local": lambda strategy, s: strategy,
    "server-fixed": lambda strategy, s: DifferentialPrivacyServerSideFixedClipping(
        strategy, s.dp.noise_multiplier, s.dp.clipping_norm, s.min_clients
    ),
    "server-adaptive": lambda strategy, s: DifferentialPrivacyServerSideAdaptiveClipping(
        strategy, s.dp.noise_multiplier, s.min_clients, initial_clipping_norm=s.dp.clipping_norm
    ),
}


def make_strategy(settings: RunSettings) -> Strategy:
    """The configured strategy, wrapped for DP when asked."""
    base = STRATEGY_FACTORIES[settings.strategy](settings)
    return DP_WRAPPERS[settings.dp.kind](base, settings)
