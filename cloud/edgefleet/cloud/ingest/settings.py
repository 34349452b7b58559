"""Settings and counters of one ingest worker."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from edgefleet.cloud.mqtt import BrokerAddress, MqttVersion
from edgefleet.cloud.trust import RecordMacPolicy
from edgefleet.protocol import topics

LoopKind = Literal["drain", "paho"]
# Where a worker decodes, checks and writes: "process" is a child process per worker (its own
# GIL, its own core); "thread" is a thread next to the network thread (one process in all).
WorkerMode = Literal["process", "thread"]


@dataclass(frozen=True, slots=True)
class IngestSettings:
    """How one worker connects, subscribes and batches."""

    broker_url: str
    fleet: str | None = None
    client_id: str = "edgefleet-ingest-0"
    # With a group, the worker subscribes through `$share/{group}/...` (MQTT v5) so several
    # workers split the load; None subscribes plainly (one worker, or MQTT 3.1.1 brokers).
    share_group: str | None = None
    mqtt_version: MqttVersion = "5"
    mode: WorkerMode = "process"
    batch_max_records: int = 2000
    batch_max_delay_s: float = 0.05
    # The network thread hands received messages over in chunks of at most this many.
    chunk_max_messages: int = 500
    loop: LoopKind = "drain"
    max_inflight: int = 100
    throttle_rate: float = 500.0
    throttle_burst: float = 5000.0
    session_expiry_s: int = 3600
    # The cloud's command key (PEM): commit-acks are signed with it, or MAC'd with the
    # device's record key where it has one. None: commit-acks go unsigned (agents refuse them).
    command_key: str | None = None
    # How a device without a registered record key is treated (edgefleet.cloud.trust).
    record_macs: RecordMacPolicy = "when-registered"

    def __post_init__(self) -> None:
        BrokerAddress.parse(self.broker_url)
        if self.share_group is not None and self.mqtt_version != "5":
            raise ValueError("shared subscriptions need MQTT v5 (the embedded broker speaks 3.1.1)")
        if self.batch_max_records < 1 or self.batch_max_delay_s <= 0:
            raise ValueError("batches need batch_max_records >= 1 and batch_max_delay_s > 0")
        if self.chunk_max_messages < 1:
            raise ValueError("chunk_max_messages must be at least 1")
        if self.mode not in ("process", "thread"):
            raise ValueError(f"worker mode {self.mode!r} is not 'process' or 'thread'")

    def filters(self) -> list[str]:
        """The subscription filters, shared or plain."""
        plain = topics.uplink_filters(self.fleet)
        if self.share_group is None:
            return plain
        return [topics.shared(self.share_group, f) for f in plain]


@dataclass(slots=True)
class IngestStats:
    """Plain counters of one worker (also exported as Prometheus metrics)."""

    messages: int = 0
    records: int = 0
    inserted: int = 0
    duplicates: int = 0
    quarantined: int = 0
    throttled: int = 0
    batches: int = 0
    commits: int = 0
    store_errors: int = 0
    connects: int = 0
    stage_restarts: int = 0
    stage_cpu_s: float = 0.0
    # time.perf_counter() of the first successful connect (benchmarks time the consumer from it).
    connected_at: float | None = None
    by_reason: dict[str, int] = field(default_factory=dict)
