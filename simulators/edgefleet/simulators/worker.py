"""One simulator process: its share of the devices on one event loop, one MQTT socket loop
(every paho client is driven by this loop's selector), one inference thread, and the timeline.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
import traceback
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from edgefleet.signals import Drift
from edgefleet.simulators.device import DeviceContext, DeviceResult, SimDevice, Tuning
from edgefleet.simulators.inline import LoopExecutor
from edgefleet.simulators.plan import Action, DevicePlan
from edgefleet.simulators.proxy import PartitionProxy
from edgefleet.simulators.scenario import (
    ClockSkew,
    Crash,
    DriftOnset,
    OutboxCap,
    Partition,
    SlowDevice,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What one worker process runs (picklable: it crosses a spawn boundary)."""

    index: int
    devices: tuple[DevicePlan, ...]
    actions: tuple[Action, ...]
    duration: float
    fleet: str
    host: str
    port: int
    workdir: Path
    bundles: dict[str, Path]
    trusted_keys: tuple[Path, ...]
    tuning: Tuning = field(default_factory=Tuning)
    # Public keys the agents accept commands from (the cloud's command.pub).
    command_keys: tuple[Path, ...] = ()
    proxied_groups: tuple[str, ...] = ()
    drain_timeout: float = 90.0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A worker's state for the live view."""

    devices: int
    online: int
    running: int
    published: int
    depth: int
    depth_max: int
    rss_mb: float


def _rss_mb() -> float:
    try:
        with open(f"/proc/{os.getpid()}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return 0.0


class Worker:
    """Runs the devices of one :class:`WorkerSpec` and reports through ``out`` (a queue)."""

    def __init__(self, spec: WorkerSpec, out: Any, go: Any, t0: Any, abort: Any) -> None:
        self.spec = spec
        self.out = out
        self.go = go
        self.t0 = t0
        self.abort = abort
        self.devices: dict[str, SimDevice] = {}
        self.proxies: dict[str, PartitionProxy] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def _say(self, text: str) -> None:
        self.out.put(("event", self.spec.index, text))

    def snapshot(self) -> Snapshot:
        """Devices online, published messages and outbox depths now."""
        depths = [d.depth for d in self.devices.values()]
        return Snapshot(
            devices=len(self.devices),
            online=sum(d.online for d in self.devices.values()),
            running=sum(d.agent is not None for d in self.devices.values()),
            published=sum(d.published for d in self.devices.values()),
            depth=sum(depths),
            depth_max=max(depths, default=0),
            rss_mb=_rss_mb(),
        )

    async def run(self) -> list[DeviceResult]:
        """Start the devices, wait for the go, play the timeline, drain, stop, account."""
        spec = self.spec
        loop = asyncio.get_running_loop()
        infer = ThreadPoolExecutor(1, thread_name_prefix="sim-infer")
        # Each outbox stays on one executor (its one writer): the loop's thread itself by default,
        # or one of `db_threads` single-thread pools (their fsyncs overlap, with synchronous=full).
        db: list[Executor] = [
            ThreadPoolExecutor(1, thread_name_prefix=f"sim-db{i}")
            for i in range(spec.tuning.db_threads)
        ] or [LoopExecutor()]
        started = asyncio.Event()
        io = ThreadPoolExecutor(4, thread_name_prefix="sim-io")
        # paho's blocking connect runs in the default executor: size it for a reconnect storm.
        loop.set_default_executor(ThreadPoolExecutor(8, thread_name_prefix="sim-connect"))
        for group in spec.proxied_groups:
            self.proxies[group] = await PartitionProxy(spec.host, spec.port).start()
        ctx = DeviceContext(
            fleet=spec.fleet,
            host=spec.host,
            port=spec.port,
            workdir=spec.workdir,
            bundles=spec.bundles,
            trusted_keys=spec.trusted_keys,
            command_keys=spec.command_keys,
            infer=infer,
            db_pools=list(db),
            io=io,
            tuning=spec.tuning,
            proxies={g: p.port for g, p in self.proxies.items()},
            started=started,
        )
        gate = asyncio.Semaphore(16)

        async def start(plan: DevicePlan) -> None:
            async with gate:
                dev = SimDevice(plan, ctx)
                self.devices[plan.device_id] = dev
                await dev.start()

        try:
            await asyncio.gather(*(start(p) for p in spec.devices))
            # Every agent's long-lived objects out of the collector's sight: full collections
            # no longer walk a thousand agents (6 % of the worker's CPU at 1000 devices).
            gc.collect()
            gc.freeze()
            self.out.put(("ready", spec.index, len(self.devices)))
            while not self.go.is_set():
                if self.abort.is_set():
                    return []
                await asyncio.sleep(0.05)
            start_at = loop.time() + (self.t0.value - time.time())
            loop.call_at(start_at, started.set)
            for action in spec.actions:
                loop.call_at(start_at + action.at, self._spawn, self._apply(action))
            end_at = start_at + spec.duration
            while loop.time() < end_at and not self.abort.is_set():
                self.out.put(("snap", spec.index, self.snapshot()))
                await asyncio.sleep(min(1.0, max(0.0, end_at - loop.time())))
            await self._drain()
            return await self._stop()
        finally:
            for p in self.proxies.values():
                await p.close()
            for pool in (infer, io, *db):
                pool.shutdown(wait=False, cancel_futures=True)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _mine(self, action: Action) -> list[SimDevice]:
        return [self.devices[d] for d in action.devices if d in self.devices]

    async def _apply(self, action: Action) -> None:
        handler = self._handlers[type(action.event)]
        await handler(self, action.event, self._mine(action))

    async def _drift(self, ev: DriftOnset, mine: list[SimDevice]) -> None:
        for d in mine:
            d.set_drift(Drift(ev.drift, ev.magnitude))

    async def _cut(self, ev: Partition | OutboxCap, mine: list[SimDevice]) -> None:
        capped = isinstance(ev, OutboxCap)
        if isinstance(ev, OutboxCap):
            cap = ev.max_records
            await asyncio.gather(*(d.set_outbox_cap(cap) for d in mine))
        proxy = self.proxies.get(ev.group)
        if proxy is not None:
            proxy.cut()
        await asyncio.sleep(ev.duration)
        if capped:
            await asyncio.gather(*(d.set_outbox_cap(None) for d in mine))
        if proxy is not None:
            proxy.heal()

    async def _crash(self, ev: Crash, mine: list[SimDevice]) -> None:
        recs = await asyncio.gather(*(d.crash() for d in mine))
        for d, rec in zip(mine, recs, strict=True):
            if rec is not None:
                self._say(f"{d.plan.device_id} crashed (boot {rec.boot_id})")
        await asyncio.sleep(ev.restart_after)
        await asyncio.gather(*(d.restart() for d in mine))
        for d in mine:
            self._say(f"{d.plan.device_id} restarted")

    async def _slow(self, ev: SlowDevice, mine: list[SimDevice]) -> None:
        for d in mine:
            d.set_delay(ev.delay_ms / 1000)
        await asyncio.sleep(ev.duration)
        for d in mine:
            d.set_delay(0.0)

    async def _skew(self, ev: ClockSkew, mine: list[SimDevice]) -> None:
        for d in mine:
            d.clock.offset += ev.offset_s

    # Event type -> handler (broker outages run in the coordinator, not here).
    _handlers: ClassVar[dict[type, Callable[..., Awaitable[None]]]] = {
        DriftOnset: _drift,
        Partition: _cut,
        OutboxCap: _cut,
        Crash: _crash,
        SlowDevice: _slow,
        ClockSkew: _skew,
    }

    async def _drain(self) -> None:
        for d in self.devices.values():
            d.finish()
        # Timeline actions still running (a restart, a heal) finish first.
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        deadline = time.monotonic() + self.spec.drain_timeout
        while time.monotonic() < deadline and not self.abort.is_set():
            if all(d.drained() for d in self.devices.values()):
                return
            self.out.put(("snap", self.spec.index, self.snapshot()))
            await asyncio.sleep(0.5)
        left = sum(not d.drained() for d in self.devices.values())
        self._say(f"drain timed out: {left} devices still hold uncommitted records")

    async def _stop(self) -> list[DeviceResult]:
        await asyncio.gather(*(d.stop() for d in self.devices.values()))
        self.out.put(("snap", self.spec.index, self.snapshot()))
        return [d.result() for d in self.devices.values()]


def worker_main(spec: WorkerSpec, out: Any, go: Any, t0: Any, abort: Any) -> None:
    """Entry point of a worker process (spawned)."""
    logging.basicConfig(
        filename=str(spec.workdir / f"worker-{spec.index}.log"),
        level=logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        results = asyncio.run(Worker(spec, out, go, t0, abort).run())
        out.put(("result", spec.index, results))
    except BaseException as exc:
        out.put(("error", spec.index, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
