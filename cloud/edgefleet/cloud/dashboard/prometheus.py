"""Per-device and per-version Prometheus series for Grafana, with bounded label cardinality."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from edgefleet.cloud.metrics import CloudMetrics
from edgefleet.cloud.store.base import DeviceState, TelemetryStore
from edgefleet.protocol.errors import ConfigError

# Per-device gauge name -> (help, attribute of DeviceState, scale to base units).
DEVICE_GAUGES: dict[str, tuple[str, str, float]] = {
    "edgefleet_device_cpu_percent": ("CPU use of the device (percent)", "cpu_percent", 1.0),
    "edgefleet_device_temperature_celsius": ("SoC temperature", "temperature_c", 1.0),
    "edgefleet_device_memory_rss_bytes": ("Resident memory of the agent", "mem_rss_mb", 2**20),
    "edgefleet_device_outbox_depth": ("Records waiting in the outbox", "outbox_depth", 1.0),
    "edgefleet_device_outbox_dropped": (
        "Records the outbox dropped (since boot)",
        "outbox_drops",
        1.0,
    ),
    "edgefleet_device_inferences": ("Inferences run since boot", "inferences", 1.0),
    "edgefleet_device_throttled_flags": ("Raspberry Pi get_throttled bit mask", "throttled", 1.0),
    "edgefleet_device_last_seen_timestamp_seconds": (
        "Last message from the device",
        "last_seen",
        1.0,
    ),
}
LATENCY = {"0.5": "latency_ms_p50", "0.95": "latency_ms_p95", "0.99": "latency_ms_p99"}
# Model names and agent versions come from devices: cap their length and how many are listed.
MAX_LABEL = 64


@dataclass(frozen=True, slots=True)
class SeriesLimits:
    """Bounds on label values: per-device series for at most ``max_devices`` devices."""

    max_devices: int = 1000
    max_versions: int = 20
    cache_s: float = 2.0

    def __post_init__(self) -> None:
        if self.max_devices < 0 or self.max_versions < 1 or self.cache_s < 0:
            raise ConfigError(
                f"series limits need max_devices >= 0 (--metrics-max-devices, got "
                f"{self.max_devices}), max_versions >= 1 and cache_s >= 0"
            )


def _label(value: str | None, default: str) -> str:
    return (value or default)[:MAX_LABEL]


def _gauge(name: str, help_: str, *labels: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_, labels=list(labels))


def _top(
    counter: Counter[tuple[str, ...]], limit: int, other: tuple[str, ...]
) -> dict[tuple[str, ...], int]:
    top = dict(counter.most_common(limit))
    rest = sum(counter.values()) - sum(top.values())
    if rest:
        top[other] = top.get(other, 0) + rest
    return top


class DeviceCollector(Collector):
    """Reads fleet state from the store at scrape time (cached briefly: several scrapers)."""

    def __init__(
        self, store: TelemetryStore, *, fleet: str | None = None, limits: SeriesLimits | None = None
    ) -> None:
        self._store = store
        self._fleet = fleet
        self.limits = limits or SeriesLimits()
        self._lock = threading.Lock()
        self._cached: tuple[float, list[GaugeMetricFamily]] | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Every family, from a cache at most ``cache_s`` old."""
        with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] > self.limits.cache_s:
                self._cached = (now, self._families(self._store.devices(fleet=self._fleet)))
            families = self._cached[1]
        yield from families

    def _families(self, devices: list[DeviceState]) -> list[GaugeMetricFamily]:
        lim = self.limits
        state = _gauge("edgefleet_fleet_devices", "Devices per fleet and state", "fleet", "state")
        per_state = Counter((d.fleet, "online" if d.online else "offline") for d in devices)
        for (fleet, st), n in sorted(per_state.items()):
            state.add_metric([fleet, st], n)
        models = _gauge(
            "edgefleet_fleet_devices_by_model",
            "Devices per model version",
            "fleet",
            "model",
            "version",
        )
        by_model: Counter[tuple[str, ...]] = Counter(
            (d.fleet, _label(d.model, "none"), _label(d.model_version, "none")) for d in devices
        )
        for key, n in sorted(_top(by_model, lim.max_versions, ("*", "other", "other")).items()):
            models.add_metric(list(key), n)
        agents = _gauge(
            "edgefleet_fleet_devices_by_agent",
            "Devices per agent version",
            "fleet",
            "agent_version",
        )
        by_agent: Counter[tuple[str, ...]] = Counter(
            (d.fleet, _label(d.agent_version, "unknown")) for d in devices
        )
        for key, n in sorted(_top(by_agent, lim.max_versions, ("*", "other")).items()):
            agents.add_metric(list(key), n)
        shown = sorted(devices, key=lambda d: d.device_id)[: lim.max_devices]
        truncated = GaugeMetricFamily(
            "edgefleet_device_series_truncated",
            "Devices left out of the per-device series (over SeriesLimits.max_devices)",
            value=len(devices) - len(shown),
        )
        online = _gauge(
            "edgefleet_device_online", "1 if its last status is online", "fleet", "device"
        )
        latency = _gauge(
            "edgefleet_device_latency_seconds", "Inference latency quantiles the agent reports",
            "fleet", "device", "quantile",
        )  # fmt: skip
        gauges = {n: _gauge(n, h, "fleet", "device") for n, (h, _a, _s) in DEVICE_GAUGES.items()}
        for d in shown:
            ids = [d.fleet, d.device_id]
            online.add_metric(ids, float(d.online))
            for name, (_h, attr, scale) in DEVICE_GAUGES.items():
                value = getattr(d, attr)
                if value is not None:
                    gauges[name].add_metric(ids, float(value) * scale)
            for q, attr in LATENCY.items():
                value = getattr(d, attr)
                if value is not None:
                    latency.add_metric([*ids, q], float(value) / 1000.0)
        return [state, models, agents, truncated, online, latency, *gauges.values()]


def register_device_metrics(
    metrics: CloudMetrics,
    store: TelemetryStore,
    *,
    fleet: str | None = None,
    limits: SeriesLimits | None = None,
) -> DeviceCollector:
    """Add the per-device and per-version series to a cloud's ``/metrics``."""
    collector = DeviceCollector(store, fleet=fleet, limits=limits)
    metrics.registry.register(collector)
    return collector
