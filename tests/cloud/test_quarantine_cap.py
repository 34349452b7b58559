"""The global quarantine cap: a flood rotating device ids cannot fill the store."""

from __future__ import annotations

from pathlib import Path

from edgefleet.cloud.ingest.base import Chunk
from edgefleet.cloud.ingest.core import IngestCore
from edgefleet.cloud.ingest.settings import IngestSettings
from edgefleet.cloud.ingest.throttle import QuarantineCap
from edgefleet.cloud.store import open_store


def test_flood_rotating_5000_device_ids_is_capped(tmp_path: Path) -> None:
    """58k malformed messages from 5,000 ids over 13 s: at most burst + rate*13 rows (+1/s)."""
    store = open_store(f"sqlite:///{tmp_path / 'q.db'}")
    core = IngestCore(IngestSettings(broker_url="mqtt://unused:1883"), store)
    total, t0 = 58_000, 1_000_000.0
    per_chunk = 500
    for i in range(0, total, per_chunk):
        now = t0 + 13.0 * i / total
        msgs = [
            (f"edgefleet/v1/f/d{(i + j) % 5000}/telemetry/readings".encode(), b"\xffnot-msgpack")
            for j in range(per_chunk)
        ]
        core.feed(Chunk(now, msgs))
        out = core.flush()
        assert out is not None
    rows = store.quarantined(limit=10_000)
    cap = QuarantineCap()
    bound = cap.burst + cap.rate * 13 + 14  # plus one summary row a second
    assert len(rows) <= bound, len(rows)
    assert len(rows) >= cap.burst  # the first burst is kept: operators see what happened
    capped = [r for r in rows if r.reason == "quarantine-capped"]
    assert capped, "the cap must say it dropped rows"
    assert core.throttle.quarantine.dropped >= total - bound
    store.close()


def test_cap_refills_at_its_rate() -> None:
    """After a burst, rows are admitted again at ``rate`` a second, bytes bounded too."""
    cap = QuarantineCap(rate=10, burst=5, byte_rate=1_000_000, byte_burst=1_000_000)
    assert all(cap.admit(0.0, 100) for _ in range(5))
    assert not cap.admit(0.0, 100)
    assert cap.dropped == 1
    assert cap.admit(0.1, 100)
    small = QuarantineCap(rate=1000, burst=1000, byte_rate=100, byte_burst=300)
    assert small.admit(0.0, 200)
    assert not small.admit(0.0, 200)
