"""The inference loop: source chunks through the serving pipeline, results onto the uplink."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor

from edgefleet.edge.config import AgentConfig
from edgefleet.edge.fl.samples import TrainingSamples
from edgefleet.edge.health import LatencyWindow
from edgefleet.edge.installer import Installer
from edgefleet.edge.reports import Reports
from edgefleet.edge.sources import Source
from edgefleet.edge.uplink import Uplink


class Inference:
    """Reads the source until it runs out or ``stop``; the pipeline runs in ``executor``.

    The pipeline is read from ``installer`` per chunk, so a swap takes effect at the next
    chunk; each batch of windows is counted towards drift sketches and training samples.
    """

    def __init__(
        self,
        config: Callable[[], AgentConfig],
        installer: Installer,
        reports: Reports,
        samples: TrainingSamples,
        latency: LatencyWindow,
        *,
        executor: Executor,
    ) -> None:
        self._config = config
        self.installer = installer
        self.reports = reports
        self.samples = samples
        self.latency = latency
        self.executor = executor
        self.source_done = asyncio.Event()

    async def run(self, source: Source, uplink: Uplink, stop: asyncio.Event) -> None:
        """Serve until ``stop``; at the source's end, flush and set :attr:`source_done`."""
        loop = asyncio.get_running_loop()
        rate = source.rate_hz
        self.reports.start_sketches()
        while not stop.is_set():
            chunk = await source.read()
            if chunk is None:
                await uplink.flush()
                self.source_done.set()
                return
            pipe = self.installer.pipeline
            if self._config().uplink.publish_readings:
                uplink.add_readings("readings", source.channels, chunk.t0, rate, chunk.samples)
            if pipe is None:
                continue
            results = await loop.run_in_executor(
                self.executor, pipe.process, chunk.t0, chunk.samples, rate
            )
            if not results:
                continue
            uplink.add_results(pipe.model, pipe.model_version, results)
            self.latency.add([r.latency_ms for r in results])
            sketched_at = self.reports.count(pipe, len(results))
            self.samples.count(pipe.model, pipe.last_input, len(results), sketched_at)
