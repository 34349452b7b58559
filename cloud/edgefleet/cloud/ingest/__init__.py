"""Ingest: MQTT in, exactly-once into the store, commit-acks out."""

from edgefleet.cloud.ingest.settings import (
    IngestSettings,
    IngestStats,
    LoopKind,
    WorkerMode,
)
from edgefleet.cloud.ingest.worker import IngestWorker

__all__ = ["IngestSettings", "IngestStats", "IngestWorker", "LoopKind", "WorkerMode"]
