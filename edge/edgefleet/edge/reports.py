"""The agent's own reports: health every interval, drift sketches every N windows, events."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Literal

from edgefleet.edge.commands import NO_COMMAND_KEYS
from edgefleet.edge.config import AgentConfig
from edgefleet.edge.health import LatencyWindow, SystemProbe
from edgefleet.edge.pipeline import Pipeline
from edgefleet.edge.uplink import Uplink
from edgefleet.protocol import topics
from edgefleet.protocol.messages import DriftSketch, Event, Health, Scalar

Level = Literal["debug", "info", "warning", "error", "critical"]


class Reports:
    """Queues what the agent says about itself (``health``, ``drift``, ``event/*``) on the uplink.

    Settings are read through ``config`` at each use: ``health.interval_s`` and
    ``drift.every_windows`` change at run time (set-config).
    """

    def __init__(
        self,
        config: Callable[[], AgentConfig],
        uplink: Callable[[], Uplink],
        *,
        version: str,
        clock: Callable[[], float],
        io_executor: Executor,
        latency: LatencyWindow,
        probe: SystemProbe,
        model_ref: Callable[[], tuple[str | None, str | None]],
        flush_soon: Callable[[], None],
    ) -> None:
        cfg = config()
        self.device_id = cfg.device.id
        self.fleet = cfg.device.fleet
        self._config = config
        self._uplink = uplink
        self.version = version
        self.clock = clock
        self.io_executor = io_executor
        self.latency = latency
        self.probe = probe
        self._model_ref = model_ref
        self._flush_soon = flush_soon
        self._windows = 0
        self._sketch_start = clock()

    # ------------------------------------------------------------------ health

    async def health_loop(self, stop: asyncio.Event) -> None:
        """Report health every ``health.interval_s`` until ``stop`` is set."""
        while not stop.is_set():
            await asyncio.sleep(self._config().health.interval_s)
            await self.report_health()

    async def report_health(self) -> None:
        """Sample the host and queue one ``health/1`` record (the health loop's tick)."""
        loop = asyncio.get_running_loop()
        topic = topics.telemetry(self.fleet, self.device_id, "health")
        sample = await loop.run_in_executor(self.io_executor, self.probe.sample)
        pct = self.latency.percentiles()
        model, version = self._model_ref()
        now = self.clock()
        up, uptime = self._uplink(), self.probe.uptime_s()

        def build(boot: str, seq: int) -> Health:
            # Depth and drops as of the flush that numbers this record, not of the sample.
            return Health(
                device_id=self.device_id,
                boot_id=boot,
                seq=seq,
                sent_at=now,
                uptime_s=uptime,
                agent_version=self.version,
                model=model,
                model_version=version,
                cpu_percent=sample.cpu_percent,
                mem_rss_mb=sample.mem_rss_mb,
                mem_available_mb=sample.mem_available_mb,
                temperature_c=sample.temperature_c,
                throttled=sample.throttled,
                inferences=self.latency.total,
                latency_ms_p50=pct[0] if pct else None,
                latency_ms_p95=pct[1] if pct else None,
                latency_ms_p99=pct[2] if pct else None,
                outbox_depth=up.depth,
                outbox_drops=up.drops,
                commands_refused=dict(up.command_refusals),
                trust_error=None if self._config().trust.command_keys else NO_COMMAND_KEYS,
            )

        up.add_message("health", topic, build)

    # ------------------------------------------------------------------ drift

    def start_sketches(self) -> None:
        """The first sketch's window starts now (when inference starts)."""
        self._sketch_start = self.clock()

    def count(self, pipe: Pipeline, windows: int) -> float | None:
        """``windows`` more were inferred; every ``drift.every_windows``, queue a sketch.

        Returns the end of the sketch it queued, else None.
        """
        self._windows += windows
        every = self._config().drift.every_windows
        if not every or self._windows < every:
            return None
        self._windows = 0
        return self._drift(pipe)

    def _drift(self, pipe: Pipeline) -> float:
        features = pipe.sketch.take()
        start, end = self._sketch_start, self.clock()
        self._sketch_start = end
        topic = topics.telemetry(self.fleet, self.device_id, "drift")

        def build(boot: str, seq: int) -> DriftSketch:
            return DriftSketch(
                device_id=self.device_id,
                boot_id=boot,
                seq=seq,
                sent_at=end,
                model=pipe.model,
                model_version=pipe.model_version,
                window_start=start,
                window_end=end,
                features=features,
            )

        self._uplink().add_message("drift", topic, build)
        return end

    # ------------------------------------------------------------------ events

    def event(
        self, kind: str, level: Level, message: str, data: dict[str, Scalar] | None = None
    ) -> None:
        """Queue an event record on ``event/{kind}``."""
        now = self.clock()

        def build(boot: str, seq: int) -> Event:
            return Event(
                device_id=self.device_id,
                boot_id=boot,
                seq=seq,
                sent_at=now,
                kind=kind,
                level=level,
                message=message[:4000],
                data=data or {},
            )

        topic = topics.event(self.fleet, self.device_id, kind)
        self._uplink().add_message("event", topic, build)
        self._flush_soon()

    def store_error(self, message: str, failures: int) -> None:
        """Report the first failed outbox write of a run of them, and the recovery."""
        # Once per outage: the event is itself a record that waits for the same outbox.
        if failures == 1:
            self.event(
                "outbox",
                "error",
                f"writing the outbox failed: {message}; records wait in memory and the write "
                "is retried with backoff (free space on the data_dir file system)",
            )
        elif failures == 0:
            self.event("outbox", "info", "the outbox takes writes again")
