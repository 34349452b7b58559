"""Start ingest workers against a test broker and a fresh store, for the cloud tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from edgefleet.cloud.ingest import IngestSettings, IngestWorker
from edgefleet.cloud.metrics import CloudMetrics
from edgefleet.cloud.node import CloudNode
from edgefleet.cloud.store import open_store
from edgefleet.cloud.store.base import TelemetryStore
from support.trust import command_private_key


def unique_fleet() -> str:
    """A fleet id no other test uses, so tests can share one broker."""
    return f"t{uuid.uuid4().hex[:10]}"


@contextmanager
def running_ingest(
    broker_url: str,
    store: TelemetryStore,
    fleet: str,
    *,
    workers: int = 1,
    **overrides: object,
) -> Iterator[list[IngestWorker]]:
    """Run ``workers`` ingest workers (shared subscription when more than one)."""
    base = IngestSettings(
        broker_url=broker_url,
        fleet=fleet,
        batch_max_delay_s=0.02,
        command_key=str(command_private_key()),
    )
    base = replace(base, **overrides)  # type: ignore[arg-type]
    node = CloudNode()
    metrics = CloudMetrics()
    group = f"ingest-{fleet}" if workers > 1 else base.share_group
    made = []
    try:
        for i in range(workers):
            settings = replace(base, client_id=f"{fleet}-ingest-{i}", share_group=group)
            # Each worker owns a connection: the store serialises writes per connection.
            own = store if i == 0 else open_store(store.url)
            made.append(IngestWorker(settings, own, node, metrics).start())
        yield made
    finally:
        for w in made:
            w.stop()
        for w in made[1:]:
            w.store.close()


def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite URL under ``tmp_path``."""
    return f"sqlite:///{tmp_path / 'edgefleet.db'}"
