"""Columnar telemetry series of one device, the shape uPlot draws without copying."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from edgefleet.cloud.store.base import TelemetryStore

# Chart name -> the health columns it draws (see static/js/device.js).
HEALTH_SERIES = {
    "cpu": "cpu_percent",
    "temp": "temperature_c",
    "p50": "latency_ms_p50",
    "p95": "latency_ms_p95",
    "outbox": "outbox_depth",
}


@dataclass(slots=True)
class SeriesCursor:
    """Where a viewer's series stand, so a live update sends only new records."""

    health_t: float | None = None
    inference_t: float | None = None
    # Keys already sent at exactly the newest t (the query is t >= since).
    seen: set[tuple[str, str, int]] = field(default_factory=set)


def _fresh(rows: list[dict[str, Any]], table: str, cursor: SeriesCursor) -> list[dict[str, Any]]:
    rows = [r for r in reversed(rows) if (table, r["boot_id"], r["seq"]) not in cursor.seen]
    if rows:
        newest = max(r["t"] for r in rows)
        cursor.seen = {k for k in cursor.seen if k[0] != table} | {
            (table, r["boot_id"], r["seq"]) for r in rows if r["t"] == newest
        }
    return rows


def device_series(
    store: TelemetryStore, device_id: str, *, limit: int = 600, cursor: SeriesCursor | None = None
) -> dict[str, Any]:
    """Health and inference series of a device, oldest first; only newer than ``cursor``."""
    cursor = cursor if cursor is not None else SeriesCursor()
    health = _fresh(
        store.records("health", device_id=device_id, since=cursor.health_t, limit=limit),
        "health",
        cursor,
    )
    inference = _fresh(
        store.records("inference", device_id=device_id, since=cursor.inference_t, limit=limit),
        "inference",
        cursor,
    )
    if health:
        cursor.health_t = health[-1]["t"]
    if inference:
        cursor.inference_t = inference[-1]["t"]
    out: dict[str, Any] = {
        "health": {"t": [r["t"] for r in health]}
        | {name: [r[col] for r in health] for name, col in HEALTH_SERIES.items()},
        "inference": {
            "t": [r["t"] for r in inference],
            "latency": [r["latency_ms"] for r in inference],
            "score": [r["score"] for r in inference],
        },
        "labels": dict(Counter(r["label"] for r in inference if r["label"] is not None)),
    }
    return out
