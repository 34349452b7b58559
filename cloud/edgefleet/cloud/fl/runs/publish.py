"""Round metrics into the cloud store as events, so dashboards and the API can show them."""

from __future__ import annotations

import json
import time
from typing import Any

from edgefleet.cloud.store.base import IngestBatch, TelemetryStore

# Rounds are stored as events of a pseudo-device per run: `fl:<model>`, boot = the run id,
# seq = the round, so a replayed round is a duplicate (idempotent), never a second row.
KIND = "fl_round"


def round_batch(model: str, run_id: str, rec: dict[str, Any]) -> IngestBatch:
    """One round record as an ``events`` row of device ``fl:<model>``."""
    now = time.time()
    level = "info" if rec["status"] == "aggregated" else "warning"
    hold = ", ".join(f"{k} {v:.4f}" for k, v in rec.get("holdout", {}).items())
    message = f"round {rec['round']} {rec['status']}: {rec['reason'] or hold}"[:500]
    row = (
        f"fl:{model}",
        run_id,
        int(rec["round"]),
        now,
        float(rec.get("at") or now),
        KIND,
        level,
        message,
        json.dumps(rec),
    )
    return IngestBatch(records={"events": [row]})


def publish_round(store: TelemetryStore, model: str, run_id: str, rec: dict[str, Any]) -> None:
    """Write one round record to the store (a duplicate round is skipped)."""
    store.write_batch(round_batch(model, run_id, rec))
