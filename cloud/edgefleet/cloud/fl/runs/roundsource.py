"""The dashboard's :class:`~edgefleet.cloud.dashboard.base.RoundSource` over ``fl_round`` events."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from edgefleet.cloud.fl.runs.publish import KIND
from edgefleet.cloud.store.base import TelemetryStore


def round_row(event: dict[str, Any]) -> dict[str, Any]:
    """One stored ``fl_round`` event as the Learning page shows a round."""
    rec: dict[str, Any] = event.get("data") or {}
    metrics: dict[str, Any] = {"status": rec.get("status", "")}
    for key in ("client_loss_before", "client_loss_after"):
        if rec.get(key) is not None:
            metrics[key] = rec[key]
    metrics.update({f"holdout_{k}": v for k, v in (rec.get("holdout") or {}).items()})
    if rec.get("reason"):
        metrics["reason"] = rec["reason"]
    return {
        "run_id": event.get("boot_id"),
        "model": str(event.get("device_id", "")).removeprefix("fl:"),
        "round": rec.get("round", event.get("seq")),
        "started_at": event.get("t"),
        "participants": rec.get("replies", 0),
        "sampled": rec.get("sampled", 0),
        "failures": rec.get("failures", 0),
        "seconds": rec.get("seconds"),
        "metrics": metrics,
    }


class StoreRounds:
    """Rounds of every run of the known models, newest first, read from the cloud store.

    Rounds are events of the pseudo-device ``fl:<model>`` (:mod:`.publish`); the models are
    those registered plus any ``extra_models()`` names (runs of a model not registered yet).
    """

    def __init__(
        self, store: TelemetryStore, extra_models: Callable[[], Iterable[str]] | None = None
    ) -> None:
        self.store = store
        self.extra_models = extra_models

    def _models(self) -> set[str]:
        names = {m.name for m in self.store.models()}
        if self.extra_models is not None:
            names.update(self.extra_models())
        return names

    def rounds(self, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` rounds over all models."""
        events: list[dict[str, Any]] = []
        for name in sorted(self._models()):
            rows = self.store.records("events", device_id=f"fl:{name}", limit=limit)
            events.extend(r for r in rows if r.get("kind") == KIND)
        events.sort(key=lambda e: (e.get("t") or 0.0, e.get("seq") or 0), reverse=True)
        return [round_row(e) for e in events[:limit]]
