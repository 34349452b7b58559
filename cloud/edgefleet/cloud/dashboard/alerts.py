"""Alerts derived from fleet state: offline devices, heat, throttling, outbox trouble."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from edgefleet.cloud.dashboard.settings import AlertRules
from edgefleet.cloud.store.base import DeviceState

# Order of severity, worst first; the overview lists alerts in this order.
LEVELS = ("error", "warning", "info")


@dataclass(frozen=True, slots=True)
class Alert:
    """One condition on one device that an operator should look at."""

    kind: str
    level: str
    device_id: str
    message: str

    def as_json(self) -> dict[str, str]:
        """The shape the dashboard's JavaScript reads."""
        return {
            "kind": self.kind,
            "level": self.level,
            "device": self.device_id,
            "msg": self.message,
        }


def device_alerts(d: DeviceState, rules: AlertRules, now: float) -> list[Alert]:
    """Every alert one device raises right now."""
    dev = d.device_id
    if not d.online:
        why = {"lwt": "lost its connection (LWT)", "shutdown": "shut down"}
        level = "error" if d.status_reason == "lwt" else "warning"
        return [
            Alert("offline", level, dev, f"{dev} {why.get(d.status_reason or '', 'is offline')}")
        ]
    found: list[tuple[str, str, str]] = []
    if d.temperature_c is not None and d.temperature_c >= rules.temperature_c:
        found.append(("hot", "warning", f"runs at {d.temperature_c:.0f} °C"))
    if d.throttled:
        found.append(("throttled", "warning", f"is throttled (flags 0x{d.throttled:x})"))
    if d.outbox_drops:
        found.append(("outbox-drops", "error", f"dropped {d.outbox_drops} outbox records"))
    if d.outbox_depth is not None and d.outbox_depth >= rules.outbox_depth:
        found.append(("outbox-backlog", "warning", f"holds {d.outbox_depth} unsent records"))
    if d.health_at is not None and now - d.health_at > rules.stale_health_s:
        found.append(("stale-health", "info", f"sent no health for {now - d.health_at:.0f} s"))
    return [Alert(kind, level, dev, f"{dev} {text}") for kind, level, text in found]


def fleet_alerts(
    devices: Iterable[DeviceState], rules: AlertRules, now: float
) -> tuple[list[Alert], dict[str, int]]:
    """The worst ``rules.max_listed`` alerts and the count of every kind."""
    everything = [a for d in devices for a in device_alerts(d, rules, now)]
    counts: dict[str, int] = {}
    for a in everything:
        counts[a.kind] = counts.get(a.kind, 0) + 1
    everything.sort(key=lambda a: (LEVELS.index(a.level), a.kind, a.device_id))
    return everything[: rules.max_listed], counts
