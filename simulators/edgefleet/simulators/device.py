"""One simulated device: the real :class:`~edgefleet.edge.agent.Agent` plus its fault knobs.

Nothing here reaches into the agent's internals: faults go through its public seams (the
injected source and clock, ``crash()``, the broker address in its config, the outbox's public
``max_records``), so what the simulator exercises is exactly what runs on a Pi.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgspec

from edgefleet.edge.agent import Agent
from edgefleet.edge.config import AgentConfig
from edgefleet.edge.outbox import Outbox
from edgefleet.signals import Drift
from edgefleet.simulators.errors import SimulationError
from edgefleet.simulators.plan import DevicePlan
from edgefleet.simulators.sources import BlockSource, BridgeSource, FleetSource

log = logging.getLogger(__name__)


class SkewClock:
    """The device's wall clock: the host's plus an offset a clock-skew event may change."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        """Wall-clock seconds as this device believes them."""
        return time.time() + self.offset


@dataclass(frozen=True, slots=True)
class Tuning:
    """Agent settings shared by every simulated device (short intervals: runs are minutes)."""

    health_interval_s: float = 5.0
    flush_interval_s: float = 0.2
    resend_after_s: float = 10.0
    drift_every_windows: int = 200
    batch_max: int = 100
    reconnect_max_s: float = 2.0
    keepalive_s: int = 10
    max_inflight: int = 20
    # Outbox threads per process; 0 runs every outbox call on the event loop's thread at once
    # (LoopExecutor): cheaper than a thread hop when the outbox does not fsync.
    db_threads: int = 0
    # "normal": no fsync per outbox commit (survives a process crash, not a power cut): every
    # simulated outbox shares one disk, and the simulator never cuts the machine's power.
    outbox_synchronous: Literal["full", "normal"] = "normal"


@dataclass(slots=True)
class DeviceContext:
    """What every device of one worker process shares: broker, bundles, executors, tuning."""

    fleet: str
    host: str
    port: int
    workdir: Path
    bundles: dict[str, Path]
    trusted_keys: tuple[Path, ...]
    infer: Executor
    db_pools: list[Executor]
    io: Executor
    tuning: Tuning = field(default_factory=Tuning)
    # Public keys the agents accept commands from (the cloud's command.pub).
    command_keys: tuple[Path, ...] = ()
    # Group name -> loopback port of its partition proxy (groups the timeline may cut off).
    proxies: dict[str, int] = field(default_factory=dict)
    # Set at the run's go: sources hold their first reading until then (None: no gate).
    started: asyncio.Event | None = None


@dataclass(frozen=True, slots=True)
class CrashRecord:
    """One crash: the boot that died, whether it was online (so its will must fire)."""

    boot_id: str
    at: float
    connected: bool
    unsaved: int


@dataclass(slots=True)
class DeviceResult:
    """A device's own accounting at the end of the run, read back from its outbox file."""

    device_id: str
    group: str
    boots: dict[str, int]
    dropped: int
    left: list[tuple[str, int]]
    crashes: list[CrashRecord]
    published_messages: int
    replays: int
    resends: int
    chunks: int
    # Samples the source handed to the agent over every boot, and (publish_readings devices)
    # the reading records still in the outbox at the end.
    samples: int = 0
    publish_readings: bool = False
    # (boot_id, seq) of the reading records still in the outbox at the end.
    left_readings: list[tuple[str, int]] = field(default_factory=list)
    error: str | None = None


class SimDevice:
    """A real agent with a seeded source, on the worker's shared loop and executors."""

    def __init__(self, plan: DevicePlan, ctx: DeviceContext) -> None:
        self.plan = plan
        self.ctx = ctx
        self.clock = SkewClock()
        self.data_dir = ctx.workdir / "devices" / plan.device_id
        self.agent: Agent | None = None
        self.source: FleetSource | None = None
        self.task: asyncio.Task[None] | None = None
        self.crashes: list[CrashRecord] = []
        self.restarts = 0
        self.drift: Drift | None = None
        self.delay_s = 0.0
        self.error: str | None = None
        self._published = self._replays = self._resends = self._chunks = self._samples = 0

    # ------------------------------------------------------------------ set-up

    def config(self) -> AgentConfig:
        """The agent configuration of this device (validated like a TOML file would be)."""
        p, c, t = self.plan, self.ctx, self.ctx.tuning
        port = c.proxies.get(p.group, c.port)
        bundle = c.bundles.get(p.model)
        raw: dict[str, Any] = {
            "device": {"id": p.device_id, "fleet": c.fleet, "data_dir": str(self.data_dir)},
            "mqtt": {
                "host": c.host,
                "port": port,
                "keepalive_s": t.keepalive_s,
                "reconnect_min_s": 0.2,
                "reconnect_max_s": t.reconnect_max_s,
                "max_inflight": t.max_inflight,
            },
            "source": {
                "kind": "simulated",
                "signal": p.signal,
                "seed": p.seed,
                "rate_hz": p.rate_hz,
                "chunk": p.chunk,
                "variation": p.variation,
            },
            "model": {
                "bundle": str(bundle) if bundle else None,
                "trusted_keys": [str(k) for k in c.trusted_keys],
            },
            "trust": {"command_keys": [str(k) for k in c.command_keys]},
            "uplink": {
                "batch_max": t.batch_max,
                "flush_interval_s": t.flush_interval_s,
                "resend_after_s": t.resend_after_s,
                "publish_readings": p.publish_readings,
            },
            "outbox": {"synchronous": t.outbox_synchronous},
            "health": {"interval_s": t.health_interval_s},
            "drift": {"every_windows": t.drift_every_windows},
        }
        try:
            return msgspec.convert(raw, AgentConfig)
        except msgspec.ValidationError as exc:
            raise SimulationError(f"{p.device_id}: bad agent configuration: {exc}") from None

    async def _make_source(self) -> FleetSource:
        p = self.plan
        seed = p.seed + 7919 * self.restarts
        inner: BlockSource | BridgeSource
        paced = 0
        if p.source == "serial":
            inner = await BridgeSource(
                seed,
                rate_hz=p.rate_hz,
                chunk=p.chunk,
                signal=p.signal,
                variation=p.variation,
                clock=self.clock.now,
            ).start()
        else:
            # Unpaced: the FleetSource paces it (one timer per chunk, woken early by finish()).
            inner = BlockSource(
                p.signal,
                seed,
                rate_hz=p.rate_hz,
                chunk=p.chunk,
                variation=p.variation,
                clock=self.clock.now,
            )
            paced = p.chunk
        # A seeded phase within one chunk period: devices of a fleet do not read in lockstep.
        phase = random.Random(seed).random() * p.chunk / p.rate_hz  # noqa: S311 - not crypto
        src = FleetSource(inner, paced_chunk=paced, start=self.ctx.started, phase_s=phase)
        src.delay_s = self.delay_s
        if self.drift is not None:
            src.set_drift(self.drift)
        return src

    async def start(self, within: float = 60.0) -> None:
        """Start the agent and wait until it serves (model loaded, tasks running)."""
        c = self.ctx
        self.source = await self._make_source()
        self.agent = Agent(
            self.config(),
            executor=c.infer,
            db_executor=c.db_pools[self.plan.index % len(c.db_pools)],
            io_executor=c.io,
            source=self.source,
            clock=self.clock.now,
        )
        self.task = asyncio.get_running_loop().create_task(
            self.agent.run(), name=f"agent-{self.plan.device_id}"
        )
        ready = asyncio.ensure_future(self.agent.ready.wait())
        await asyncio.wait((ready, self.task), timeout=within, return_when="FIRST_COMPLETED")
        if not ready.done():
            ready.cancel()
            if self.task.done() and self.task.exception() is not None:
                raise SimulationError(
                    f"{self.plan.device_id} did not start: {self.task.exception()}"
                )
            raise SimulationError(f"{self.plan.device_id} did not start in {within:g}s")

    # ------------------------------------------------------------------ faults

    async def crash(self) -> CrashRecord | None:
        """Power cut: no flush, no offline status, no DISCONNECT; the broker fires the will."""
        agent, task = self.agent, self.task
        if agent is None or task is None or task.done():
            return None
        transport = agent.transport
        rec = CrashRecord(
            boot_id=agent.sequencer.boot_id,
            at=time.time(),
            connected=bool(transport is not None and transport.connected),
            unsaved=agent.uplink.pending,
        )
        self._fold_counters()
        agent.crash()
        with contextlib.suppress(Exception):
            await task
        self.crashes.append(rec)
        self.agent = None
        return rec

    async def restart(self) -> None:
        """Boot again on the same data directory: new boot id, the outbox is replayed."""
        self.restarts += 1
        await self.start()

    def set_drift(self, drift: Drift | None) -> None:
        """Drift the device's signal from now on (kept across restarts)."""
        self.drift = drift
        if self.source is not None:
            self.source.set_drift(drift)

    def set_delay(self, seconds: float) -> None:
        """Make each chunk arrive ``seconds`` late (0 restores normal speed)."""
        self.delay_s = seconds
        if self.source is not None:
            self.source.delay_s = seconds

    async def set_outbox_cap(self, max_records: int | None) -> None:
        """Cap the outbox (None: back to the configured size), on the outbox's own thread."""
        agent = self.agent
        if agent is None or agent.outbox is None:
            return
        box = agent.outbox
        cap = max_records if max_records is not None else agent.cfg.outbox.max_records
        await asyncio.get_running_loop().run_in_executor(
            agent.db_executor, setattr, box, "max_records", cap
        )

    # ------------------------------------------------------------------ state

    @property
    def online(self) -> bool:
        """True while the agent has an MQTT session."""
        a = self.agent
        return bool(a is not None and a.transport is not None and a.transport.connected)

    @property
    def depth(self) -> int:
        """Records in the outbox waiting for the cloud's commit."""
        a = self.agent
        return a.uplink.depth if a is not None and a.outbox is not None else 0

    @property
    def published(self) -> int:
        """MQTT messages published over every boot."""
        a = self.agent
        live = a.uplink.counters.published_messages if a is not None and a.outbox else 0
        return self._published + live

    def drained(self) -> bool:
        """Nothing queued in memory and nothing left uncommitted in the outbox."""
        a = self.agent
        if a is None or a.outbox is None:
            return True
        return a.uplink.pending == 0 and a.uplink.depth == 0

    def finish(self) -> None:
        """End of the run: stop producing readings (health goes on until stop)."""
        if self.source is not None:
            self.source.finish()

    def _fold_counters(self) -> None:
        a = self.agent
        if a is not None and a.outbox is not None:
            c = a.uplink.counters
            self._published += c.published_messages
            self._replays += c.replays
            self._resends += c.resends
        if self.source is not None:
            self._chunks += self.source.chunks
            self._samples += self.source.samples

    async def stop(self) -> None:
        """Clean shutdown: flush, publish "offline", DISCONNECT."""
        agent, task = self.agent, self.task
        if agent is None or task is None:
            return
        self._fold_counters()
        agent.stop()
        try:
            await asyncio.wait_for(task, 30)
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        self.agent = None

    def result(self) -> DeviceResult:
        """Read the outbox file back: seq high-water mark per boot, drops, rows left."""
        path = self.data_dir / "outbox.sqlite"
        boots: dict[str, int] = {}
        dropped = 0
        left: list[tuple[str, int]] = []
        left_readings: list[tuple[str, int]] = []
        if path.exists():
            box = Outbox(path, readonly=True)
            try:
                stats = box.stats()
                boots, dropped = dict(stats.boots), stats.drops
                rows = box.read_after(0, stats.depth + 1)
                left = [(r.boot_id, r.seq) for r in rows]
                left_readings = [(r.boot_id, r.seq) for r in rows if r.stream == "readings"]
            finally:
                box.close()
        return DeviceResult(
            device_id=self.plan.device_id,
            group=self.plan.group,
            boots=boots,
            dropped=dropped,
            left=left,
            crashes=list(self.crashes),
            published_messages=self._published,
            replays=self._replays,
            resends=self._resends,
            chunks=self._chunks,
            samples=self._samples,
            publish_readings=self.plan.publish_readings,
            left_readings=left_readings,
            error=self.error,
        )
