"""Prometheus metrics of one cloud process, in its own registry (no global state)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class _FleetCollector(Collector):
    """Devices online/known, read from the store at scrape time."""

    def __init__(self, counts: Callable[[], tuple[int, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        online, known = self._counts()
        yield GaugeMetricFamily(
            "edgefleet_devices_online", "Devices whose last status is online", value=online
        )
        yield GaugeMetricFamily("edgefleet_devices_known", "Devices ever seen", value=known)


class CloudMetrics:
    """Counters the ingest workers and the API update; served at ``/metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.messages = Counter(
            "edgefleet_ingest_messages", "MQTT messages received by ingest", registry=r
        )
        self.ingested = Counter(
            "edgefleet_ingest_records",
            "Records stored for the first time, per table",
            ["table"],
            registry=r,
        )
        self.duplicates = Counter(
            "edgefleet_ingest_duplicates", "Records received again and not stored twice", registry=r
        )
        self.quarantined = Counter(
            "edgefleet_ingest_quarantined", "Messages refused, per reason", ["reason"], registry=r
        )
        self.throttled = Counter(
            "edgefleet_ingest_throttled", "Messages dropped by a device's rate limit", registry=r
        )
        self.commits = Counter(
            "edgefleet_ingest_commit_acks", "Commit messages published to devices", registry=r
        )
        self.batches = Histogram(
            "edgefleet_ingest_batch_seconds",
            "Time to write one batch to the store",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.lag = Gauge(
            "edgefleet_ingest_lag_seconds",
            "Commit time minus the newest sent_at in the last batch (device clocks)",
            registry=r,
        )
        self.commit_delay = Histogram(
            "edgefleet_ingest_commit_delay_seconds",
            "From the first message of a batch arriving to its commit",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.store_errors = Counter(
            "edgefleet_ingest_store_errors", "Batches the store failed to write", registry=r
        )

    def watch_fleet(self, counts: Callable[[], tuple[int, int]]) -> None:
        """Report devices online/known from ``counts()`` at each scrape."""
        self.registry.register(_FleetCollector(counts))

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
