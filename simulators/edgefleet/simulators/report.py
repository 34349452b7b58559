"""The JSON report of a run: options, timeline, invariants, totals and per-device accounting."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from edgefleet.simulators.cloudview import CloudView
from edgefleet.simulators.driftseen import DriftSeen
from edgefleet.simulators.invariants import Checks
from edgefleet.simulators.live import LiveState
from edgefleet.simulators.plan import FleetPlan


class _Processes(Protocol):
    @property
    def processes(self) -> int: ...


class FinishedRun(Protocol):
    """What a report reads of a finished simulation (``fleet.Simulation`` is one).

    A protocol, not the class: the report is a value built from a run, and importing the
    simulation here would make the two modules import each other.
    """

    plan: FleetPlan
    state: LiveState
    view: CloudView | None
    earlier_assignments: frozenset[str]
    timeline: list[dict[str, Any]]
    notes: list[str]
    drift_seen: list[DriftSeen]

    @property
    def options(self) -> _Processes: ...

    @property
    def broker_url(self) -> str: ...

    @property
    def http_url(self) -> str: ...


@dataclass(slots=True)
class Report:
    """What a run did and whether its invariants held (``ok``)."""

    scenario: str
    seed: int
    devices: int
    processes: int
    duration_s: float
    wall_s: float
    broker: str
    api_url: str
    ok: bool
    totals: dict[str, int]
    invariants: list[dict[str, Any]]
    timeline: list[dict[str, Any]]
    per_device: dict[str, dict[str, Any]]
    memory: dict[str, float]
    notes: list[str] = field(default_factory=list)
    # Each drift onset of the timeline and what the cloud stored of it (driftseen.py).
    drift: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)
    checks: Checks | None = None

    def to_json(self) -> str:
        """The report as indented JSON (without the in-memory ``checks``)."""
        data = asdict(self)
        data.pop("checks", None)
        return json.dumps(data, indent=2, default=str)


TOTALS = (
    "produced",
    "stored",
    "dropped",
    "left_in_outbox",
    "lost",
    "duplicates",
    "unknown",
    "crashes",
    "wills_expected",
    "wills_seen",
    "unsaved_at_crash",
    "samples",
    "readings_stored",
    "samples_unaccounted",
    "published_messages",
    "replays",
    "resends",
)


def build_report(sim: FinishedRun, checks: Checks, wall_s: float) -> Report:
    """Assemble the report of a finished run."""
    plan = sim.plan
    rss = sum(s.rss_mb for s in sim.state.snaps.values())
    n = len(plan.devices)
    return Report(
        scenario=plan.scenario.name,
        seed=plan.scenario.seed,
        devices=n,
        processes=len(sim.state.snaps) or sim.options.processes,
        duration_s=plan.duration,
        wall_s=round(wall_s, 2),
        broker=sim.broker_url,
        api_url=sim.http_url,
        ok=checks.ok,
        totals={k: checks.total(k) for k in TOTALS},
        invariants=[asdict(i) for i in checks.invariants],
        timeline=list(sim.timeline),
        per_device={d.device_id: {**asdict(d), "ok": d.ok} for d in checks.devices},
        memory={"worker_rss_mb": round(rss, 1), "mb_per_device": round(rss / n, 3) if n else 0.0},
        notes=list(sim.notes),
        drift=[seen.to_dict() for seen in sim.drift_seen],
        extra={"assignments": _assignments(sim)},
        checks=checks,
    )


def _assignments(sim: FinishedRun) -> list[dict[str, Any]]:
    view = sim.view
    if view is None:
        return []
    return [
        {
            "id": a.id,
            "model": f"{a.model}@{a.version}",
            "states": a.counts(),
            "refusals": {t.device_id: t.reason for t in a.targets if t.state != "succeeded"},
        }
        for a in view.assignments(limit=1000)
        if a.id not in sim.earlier_assignments
    ]


def write_report(report: Report, path: Path) -> Path:
    """Write the report as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report.to_json())
    return path
