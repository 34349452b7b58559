"""SecAgg+ secure aggregation: Flower's legacy workflow API, with the outputs of our round loop.

Flower 1.41 offers SecAgg+ only through its legacy API (``DefaultWorkflow`` with a
``SecAggPlusWorkflow``, a legacy strategy, a ``ClientApp(client_fn=...)`` with
``secaggplus_mod``), not with the Message-API strategies :class:`RoundRunner` drives. This
module runs that workflow and writes what a normal run writes (``rounds.jsonl`` records,
``result.npz``, ``summary.json``), so :func:`edgefleet.cloud.fl.apps.outcome.collect` and the
hand-off work unchanged. The server sees only the sum of the masked, quantised updates; the
aggregate equals FedAvg's within the quantisation step (``2 * clipping_range / 2**22`` per
client, divided by the clients' summed weight ratios).

Each round is four message exchanges (setup, share keys, collect masked vectors, unmask),
each a fresh ClientApp process per SuperNode in Flower 1.41: a round costs several times
a plain one (measured in docs/federated.md).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
from flwr.app import Context
from flwr.common import FitIns, FitRes, Parameters, Scalar, ndarrays_to_parameters
from flwr.server import ServerConfig
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState
from flwr.serverapp import Grid

from edgefleet.cloud.fl.apps.rounds import (
    Array,
    RoundRecord,
    holdout_metrics,
    load_weights,
    round_config,
    save_result,
)
from edgefleet.cloud.fl.secagg.settings import SecAggSettings
from edgefleet.cloud.fl.settings import RunSettings
from edgefleet.models.trainable.spec import TrainableSpec


@dataclass
class _Captured:
    results: list[tuple[ClientProxy, FitRes]] = field(default_factory=list)
    failures: int = 0


class SecAggFedAvg(FedAvg):
    """Flower's legacy FedAvg that never blocks and keeps what each round received.

    Legacy ``configure_fit`` waits up to a day for ``min_available_clients``; the quorum wait
    with its deadline happens before (:class:`SecAggRounds`), so this samples every
    connected client at once.
    """

    def __init__(self, fit_config: Callable[[int], dict[str, Scalar]], initial: Parameters) -> None:
        super().__init__(
            fraction_evaluate=0.0,
            min_fit_clients=0,
            min_available_clients=0,
            on_fit_config_fn=fit_config,
            initial_parameters=initial,
            fit_metrics_aggregation_fn=lambda _: {},
        )
        self.captured: _Captured | None = None

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        """Every connected client, with the round's config."""
        assert self.on_fit_config_fn is not None
        ins = FitIns(parameters, self.on_fit_config_fn(server_round))
        return [(proxy, ins) for proxy in client_manager.all().values()]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """FedAvg of the (already securely summed) parameters; note who replied."""
        self.captured = _Captured(list(results), len(failures))
        return super().aggregate_fit(server_round, results, failures)

    def take(self) -> _Captured | None:
        """What the last round aggregated (None: it halted before), and forget it."""
        captured, self.captured = self.captured, None
        return captured


@dataclass(frozen=True, slots=True)
class StageTrace:
    """How one SecAgg+ stage ended: clients still active of those sampled."""

    stage: str
    active: int
    sampled: int
    threshold: int
    ok: bool
    errors: tuple[str, ...]


class TracedSecAggPlus(SecAggPlusWorkflow):
    """Flower's SecAgg+ workflow, noting each stage's survivors (for a halted round's reason)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.trace: list[StageTrace] = []

    def _traced(
        self,
        name: str,
        step: Callable[[Grid, LegacyContext, WorkflowState], bool],
        grid: Grid,
        context: LegacyContext,
        state: WorkflowState,
    ) -> bool:
        ok = step(grid, context, state)
        errors = tuple(sorted({str(e)[:200] for e in state.failures}))
        self.trace.append(
            StageTrace(
                name,
                len(state.active_node_ids),
                len(state.sampled_node_ids),
                state.threshold,
                ok,
                errors,
            )
        )
        return ok

    def setup_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        """Flower's setup stage, traced."""
        return self._traced("setup", super().setup_stage, grid, context, state)

    def share_keys_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        """Flower's share-keys stage, traced."""
        return self._traced("share keys", super().share_keys_stage, grid, context, state)

    def collect_masked_vectors_stage(
        self, grid: Grid, context: LegacyContext, state: WorkflowState
    ) -> bool:
        """Flower's collect-masked-vectors stage (the clients train here), traced."""
        step = super().collect_masked_vectors_stage
        return self._traced("collect masked vectors", step, grid, context, state)

    def unmask_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        """Flower's unmask stage, traced."""
        return self._traced("unmask", super().unmask_stage, grid, context, state)

    def halted_reason(self, deadline_s: float) -> str:
        """Why the last round did not aggregate, from its stage trace."""
        if not self.trace:
            return "SecAgg+ sampled no clients"
        last = self.trace[-1]
        reason = (
            f"SecAgg+ halted at stage '{last.stage}': {last.active} of {last.sampled} clients "
            f"answered (within {deadline_s:.0f} s each stage), reconstruction threshold "
            f"{last.threshold}"
        )
        if last.sampled < 2:
            reason = f"SecAgg+ needs at least 2 clients, {last.sampled} sampled"
        if last.errors:
            reason += f" ({'; '.join(last.errors)[:300]})"
        return reason


def _weighted(results: list[tuple[ClientProxy, FitRes]], key: str) -> float | None:
    vals = [(float(r.metrics[key]), r.num_examples) for _, r in results if key in r.metrics]
    if not vals:
        return None
    return float(np.average([v for v, _ in vals], weights=[max(n, 1) for _, n in vals]))


class SecAggRounds:
    """The fit workflow of each round: quorum with a deadline, SecAgg+, a :class:`RoundRecord`.

    Given to Flower's ``DefaultWorkflow`` as its ``fit_workflow``.
    """

    def __init__(
        self,
        settings: RunSettings,
        secagg: SecAggSettings,
        strategy: SecAggFedAvg,
        spec: TrainableSpec,
        holdout: tuple[Array, np.ndarray[Any, Any]],
        *,
        on_round: Callable[[RoundRecord], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.secagg = secagg
        self.strategy = strategy
        self.spec = spec
        self.holdout = holdout
        self.on_round = on_round
        self.clock = clock
        self.workflow = TracedSecAggPlus(**secagg.workflow_args(settings))
        self.records: list[RoundRecord] = []
        self.participants: set[int] = set()

    def _wait_quorum(self, manager: ClientManager, quorum: int) -> int:
        deadline = self.clock() + self.settings.quorum_timeout_s
        while True:
            # The compat layer refreshes the registered SuperNodes on every ``all()``.
            n = len(manager.all())
            if n >= quorum or self.clock() >= deadline:
                return n
            time.sleep(0.2)

    def _record(self, rec: RoundRecord) -> None:
        self.records.append(rec)
        with self.settings.rounds_path.open("a") as fh:
            fh.write(rec.to_json() + "\n")
        if self.on_round is not None:
            self.on_round(rec)

    def __call__(self, grid: Grid, context: Context) -> None:
        """Run one round of the legacy workflow on ``context`` (a ``LegacyContext``)."""
        ctx = cast(LegacyContext, context)
        server_round = int(
            cast(int, ctx.state.config_records[MAIN_CONFIGS_RECORD][Key.CURRENT_ROUND])
        )
        s, quorum = self.settings, self.secagg.quorum(self.settings)
        start = self.clock()
        connected = self._wait_quorum(ctx.client_manager, quorum)
        skipped: dict[str, Any] = {
            "round": server_round,
            "status": "skipped",
            "connected": connected,
            "examples": 0,
            "client_loss_before": None,
            "client_loss_after": None,
        }
        if connected < quorum:
            self._record(
                RoundRecord(
                    reason=(
                        f"quorum not reached: {connected} of {quorum} clients connected "
                        f"(SecAgg+: min_clients {s.min_clients}, reconstruction threshold "
                        f"{self.secagg.threshold(s)})"
                    ),
                    sampled=0,
                    replies=0,
                    failures=0,
                    seconds=self.clock() - start,
                    at=time.time(),
                    **skipped,
                )
            )
            return
        self.strategy.take()
        self.workflow.trace.clear()
        before = ctx.state.array_records[MAIN_PARAMS_RECORD]
        self.workflow(grid, ctx)
        captured = self.strategy.take()
        sampled = self.workflow.trace[0].sampled if self.workflow.trace else 0
        if captured is None or len(captured.results) < s.min_clients:
            reason = self.workflow.halted_reason(s.round_timeout_s)
            if captured is not None:
                # SecAgg+ may unmask fewer clients than the run's quorum (dropouts after setup):
                # Flower has already replaced the global parameters, so restore them.
                reason = (
                    f"quorum not reached: {len(captured.results)} of {s.min_clients} clients "
                    "in the secure sum"
                )
                ctx.state.array_records[MAIN_PARAMS_RECORD] = before
            replies = len(captured.results) if captured is not None else 0
            self._record(
                RoundRecord(
                    reason=reason,
                    sampled=sampled,
                    replies=replies,
                    failures=sampled - replies,
                    seconds=self.clock() - start,
                    at=time.time(),
                    **skipped,
                )
            )
            return
        weights = ctx.state.array_records[MAIN_PARAMS_RECORD].to_numpy_ndarrays()
        self.participants.update(proxy.node_id for proxy, _ in captured.results)
        x, y = self.holdout
        results = captured.results
        self._record(
            RoundRecord(
                round=server_round,
                status="aggregated",
                reason="",
                connected=connected,
                sampled=sampled,
                replies=len(results),
                failures=sampled - len(results),
                examples=sum(r.num_examples for _, r in results),
                client_loss_before=_weighted(results, "loss-before"),
                client_loss_after=_weighted(results, "loss-after"),
                holdout=holdout_metrics(self.spec, weights, x, y),
                train_seconds_max=max(
                    (float(cast(float, r.metrics.get("train-seconds", 0.0))) for _, r in results),
                    default=0.0,
                ),
                seconds=self.clock() - start,
                at=time.time(),
            )
        )


def fit_config(settings: RunSettings, trainable: bytes) -> Callable[[int], dict[str, Scalar]]:
    """The round config the devices read: :func:`round_config` plus ``server-round``."""

    def config(server_round: int) -> dict[str, Scalar]:
        # The Message-API strategies add ``server-round`` themselves, legacy ones do not.
        return {**round_config(settings, trainable), "server-round": server_round}

    return config


def run_secagg_server(
    grid: Grid,
    context: Context,
    settings: RunSettings,
    secagg: SecAggSettings,
    *,
    on_round: Callable[[RoundRecord], None] | None = None,
) -> list[Array]:
    """Run every round with SecAgg+ from the run's initial weights; save the result."""
    spec = TrainableSpec.from_json(json.loads(settings.spec_path.read_text()))
    with np.load(settings.holdout_path) as h:
        holdout = (np.asarray(h["x"], np.float32), np.asarray(h["y"]))
    initial = ndarrays_to_parameters(load_weights(settings.initial_path))
    strategy = SecAggFedAvg(fit_config(settings, settings.trainable_path.read_bytes()), initial)
    rounds = SecAggRounds(settings, secagg, strategy, spec, holdout, on_round=on_round)
    legacy = LegacyContext(
        context=context, config=ServerConfig(num_rounds=settings.rounds), strategy=strategy
    )
    DefaultWorkflow(fit_workflow=rounds)(grid, legacy)
    final = legacy.state.array_records[MAIN_PARAMS_RECORD].to_numpy_ndarrays()
    weights = [np.asarray(w, np.float32) for w in final]
    aggregated = sum(r.status == "aggregated" for r in rounds.records)
    save_result(settings, weights, len(rounds.participants), aggregated)
    return weights
