"""A point-in-time view of the fleet for the dashboard, and the diff between two of them."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from edgefleet.cloud.dashboard.alerts import fleet_alerts
from edgefleet.cloud.dashboard.base import RoundSource
from edgefleet.cloud.dashboard.settings import AlertRules
from edgefleet.cloud.store.base import DeviceState, TelemetryStore

# `last_seen` moves with every message; rounding it keeps a busy fleet's diffs small.
SEEN_RESOLUTION_S = 5.0
# Agent versions come from devices: list the most common, fold the rest into "other".
MAX_AGENT_VERSIONS = 20


def device_row(d: DeviceState) -> dict[str, Any]:
    """The compact row the overview table shows (short keys: 1,000 of them travel at once)."""
    return {
        "id": d.device_id,
        "fleet": d.fleet,
        "on": d.online,
        "why": d.status_reason,
        "seen": round(d.last_seen / SEEN_RESOLUTION_S) * SEEN_RESOLUTION_S,
        "agent": d.agent_version,
        "model": f"{d.model}@{d.model_version}" if d.model else None,
        "cpu": d.cpu_percent,
        "temp": d.temperature_c,
        "p95": d.latency_ms_p95,
        "inf": d.inferences,
        "outbox": d.outbox_depth,
        "drops": d.outbox_drops,
        "tags": list(d.tags),
    }


def _top(counter: Counter[str], limit: int) -> dict[str, int]:
    top = dict(counter.most_common(limit))
    rest = sum(counter.values()) - sum(top.values())
    if rest:
        top["other"] = top.get("other", 0) + rest
    return top


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the live overview shows, read from the store in one go."""

    taken_at: float
    rows: dict[str, dict[str, Any]]
    summary: dict[str, Any]
    alerts: list[dict[str, str]]
    # Change markers for lists the page fetches itself (quarantine, assignments).
    markers: dict[str, Any]

    def full(self, version: int) -> dict[str, Any]:
        """The whole snapshot as one event payload."""
        return {
            "v": version,
            "t": self.taken_at,
            "summary": self.summary,
            "alerts": self.alerts,
            "markers": self.markers,
            "devices": list(self.rows.values()),
        }

    def diff(self, old: Snapshot, version: int) -> dict[str, Any] | None:
        """What changed since ``old`` (None when nothing did)."""
        upsert = [r for k, r in self.rows.items() if old.rows.get(k) != r]
        removed = [k for k in old.rows if k not in self.rows]
        out: dict[str, Any] = {"v": version, "t": self.taken_at}
        if upsert:
            out["upsert"] = upsert
        if removed:
            out["remove"] = removed
        for name in ("summary", "alerts", "markers"):
            if getattr(self, name) != getattr(old, name):
                out[name] = getattr(self, name)
        return out if len(out) > 2 else None


def take_snapshot(
    store: TelemetryStore,
    rules: AlertRules,
    fleet: str | None = None,
    rounds: RoundSource | None = None,
) -> Snapshot:
    """Read fleet state, the newest quarantine row, recent assignments and the newest round."""
    now = time.time()
    devices = store.devices(fleet=fleet)
    online = sum(d.online for d in devices)
    models = Counter(f"{d.model}@{d.model_version}" if d.model else "none" for d in devices)
    agents = Counter(d.agent_version or "unknown" for d in devices)
    alerts, alert_counts = fleet_alerts(devices, rules, now)
    newest = store.quarantined(limit=1)
    assignments = store.assignments(limit=10)
    summary = {
        "devices": len(devices),
        "online": online,
        "offline": len(devices) - online,
        "models": dict(models.most_common()),
        "agents": _top(agents, MAX_AGENT_VERSIONS),
        "alerts": alert_counts,
    }
    markers = {
        "quarantine": newest[0].id if newest else None,
        "assignments": [[a.id, a.counts()] for a in assignments],
        "rounds": rounds.rounds(1)[:1] if rounds is not None else [],
    }
    return Snapshot(
        taken_at=now,
        rows={d.device_id: device_row(d) for d in devices},
        summary=summary,
        alerts=[a.as_json() for a in alerts],
        markers=markers,
    )
