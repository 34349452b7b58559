"""The agent: wires source, installer, reports, training, outbox, uplink and link; runs, stops.

Everything is injected (event loop, executors, transport factory, clock, source) and nothing
lives at module level, so the simulator can run hundreds of agents in one process on one loop.
Inference runs in ``executor`` (one thread on a device), SQLite in ``db_executor`` (the one
writer), downloads in ``io_executor``; the event loop only moves data and bytes. Each role has
its module: the link (:mod:`~edgefleet.edge.link`), model installation
(:mod:`~edgefleet.edge.installer`), reports (:mod:`~edgefleet.edge.reports`), training
(:mod:`~edgefleet.edge.training`, :mod:`~edgefleet.edge.fl.samples`), commands
(:mod:`~edgefleet.edge.commands`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from importlib import metadata

from edgefleet.edge import watchdog
from edgefleet.edge.commands import CommandHandler
from edgefleet.edge.config import AgentConfig, apply_runtime_change
from edgefleet.edge.errors import TaskFailed
from edgefleet.edge.fl.samples import TrainingSamples
from edgefleet.edge.health import LatencyWindow, SystemProbe
from edgefleet.edge.inference import Inference
from edgefleet.edge.installer import Installer
from edgefleet.edge.link import Link, mqtt_transport
from edgefleet.edge.outbox import Outbox
from edgefleet.edge.pipeline import Pipeline
from edgefleet.edge.provision import renewal_loop
from edgefleet.edge.reports import Level, Reports
from edgefleet.edge.sequencer import Sequencer
from edgefleet.edge.slots import Hook, Slots
from edgefleet.edge.sources import Source, attach_reporter, close_source, make_source
from edgefleet.edge.supervision import supervise
from edgefleet.edge.training import TrainingSessions
from edgefleet.edge.transport.base import LinkHandler, Transport
from edgefleet.edge.uplink import Uplink
from edgefleet.edge.verify import Verifier, make_verifier
from edgefleet.protocol.codec import get_codec
from edgefleet.protocol.errors import ConfigError, EdgefleetError
from edgefleet.protocol.messages import AssignModel, Scalar, SetConfig, StartTraining

log = logging.getLogger(__name__)

TransportFactory = Callable[["Agent", LinkHandler], Transport]


def agent_version() -> str:
    """The installed edgefleet version."""
    try:
        return metadata.version("edgefleet")
    except metadata.PackageNotFoundError:  # pragma: no cover - bare checkout
        return "0+unknown"


class Agent:
    """One device agent; ``await agent.run()`` until :meth:`stop` or :meth:`crash`."""

    def __init__(
        self,
        cfg: AgentConfig,
        *,
        executor: Executor | None = None,
        db_executor: Executor | None = None,
        io_executor: Executor | None = None,
        source: Source | None = None,
        transport_factory: TransportFactory | None = None,
        clock: Callable[[], float] = time.time,
        slot_hook: Hook | None = None,
        verifier: Verifier | None = None,
    ) -> None:
        self.cfg = cfg
        self.device_id = cfg.device.id
        self.fleet = cfg.device.fleet
        self.clock = clock
        self._own: list[ThreadPoolExecutor] = []
        self.executor = executor or self._pool("infer")
        self.db_executor = db_executor or self._pool("outbox")
        self.io_executor = io_executor or self._pool("io")
        self.sequencer = Sequencer()
        self.codec = get_codec(cfg.mqtt.codec)
        self.version = agent_version()
        self.source = source
        self._transport_factory = transport_factory
        self.verifier = verifier
        self.slots = Slots(cfg.data_dir / "models", hook=slot_hook)
        self.latency = LatencyWindow()
        self.probe = SystemProbe()
        self.commands = CommandHandler(self)
        self.transport: Transport | None = None
        self.outbox: Outbox | None = None
        self._uplink: Uplink | None = None
        self._stop = asyncio.Event()
        self._crashed = False
        # The roles read the settings and the uplink through these: both change after wiring.
        config, uplink = (lambda: self.cfg), (lambda: self.uplink)
        self.installer = Installer(
            config, self.slots, self.commands, device_id=self.device_id, executor=self.executor,
            io_executor=self.io_executor,
        )  # fmt: skip
        self.reports = Reports(
            config, uplink, version=self.version, clock=clock, io_executor=self.io_executor,
            latency=self.latency, probe=self.probe, model_ref=lambda: self.model_ref,
            flush_soon=self.flush_soon,
        )  # fmt: skip
        self.samples = TrainingSamples(
            cfg.fl, lambda: self.outbox, db_executor=self.db_executor, clock=clock
        )
        self.inference = Inference(
            config, self.installer, self.reports, self.samples, self.latency, executor=self.executor
        )
        self.training = TrainingSessions(
            cfg.fl, self.commands, device_id=self.device_id, db=cfg.outbox_path,
            state_dir=cfg.data_dir / "fl", io_executor=self.io_executor,
            db_executor=self.db_executor,
        )  # fmt: skip
        self.fl = self.training.manager  # a SuperNode child process, never Flower in this one
        self.link = Link(
            uplink, self.commands, self.installer, device_id=self.device_id, fleet=self.fleet,
            version=self.version, sequencer=self.sequencer, codec=self.codec, clock=clock,
        )  # fmt: skip
        self.source_done = self.inference.source_done
        self.ready = asyncio.Event()
        self.started_at = clock()

    def _pool(self, name: str) -> ThreadPoolExecutor:
        pool = ThreadPoolExecutor(1, thread_name_prefix=f"edgefleet-{name}")
        self._own.append(pool)
        return pool

    @property
    def uplink(self) -> Uplink:
        """The uplink (available once :meth:`run` has opened the outbox)."""
        assert self._uplink is not None, "the agent is not running"
        return self._uplink

    @property
    def pipeline(self) -> Pipeline | None:
        """The pipeline serving now (None: no model)."""
        return self.installer.pipeline

    @property
    def model_ref(self) -> tuple[str | None, str | None]:
        """(name, version) of the model serving now."""
        return self.installer.model_ref

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Start everything, serve until stopped, then shut down cleanly (or not, on crash)."""
        loop = asyncio.get_running_loop()
        cfg = self.cfg
        log.info(
            "%s: edgefleet agent %s starting (fleet %s, boot %s, data in %s)",
            self.device_id,
            self.version,
            self.fleet,
            self.sequencer.boot_id,
            cfg.data_dir,
        )
        self.outbox = await loop.run_in_executor(self.db_executor, self._open_outbox)
        self._uplink = Uplink(
            cfg.uplink,
            self.outbox,
            None,
            self.sequencer,
            self.codec,
            fleet=self.fleet,
            device_id=self.device_id,
            db_executor=self.db_executor,
            clock=self.clock,
            on_store_error=self.reports.store_error,
        )
        if self.source is None:
            self.source = make_source(cfg.source, self.io_executor, self.clock)
        attach_reporter(self.source, self.event)
        if self.verifier is None:
            self.verifier = make_verifier(cfg.model.verify, cfg.model.trusted_keys)
        await self.installer.start(self.source, self.verifier)
        factory = self._transport_factory
        self.transport = (
            factory(self, self.link) if factory else mqtt_transport(cfg.mqtt, self.link)
        )
        self.uplink.transport = self.transport
        tasks = [
            loop.create_task(self.transport.run(), name="transport"),
            loop.create_task(self.uplink.run(), name="uplink"),
            loop.create_task(
                self.inference.run(self.source, self.uplink, self._stop), name="infer"
            ),
            loop.create_task(self.reports.health_loop(self._stop), name="health"),
        ]
        await self.training.start_always(self.event)
        self.ready.set()
        self.installer.log_serving()
        # sd_notify READY=1 and WATCHDOG=1 from this loop under systemd (a no-op elsewhere).
        tasks.append(loop.create_task(watchdog.serve(self), name="watchdog"))
        # Renews a provisioned device's certificate before it expires (returns at once if not).
        tasks.append(loop.create_task(renewal_loop(cfg, self._stop), name="renewal"))
        failed: tuple[str, BaseException] | None = None
        try:
            failed = await supervise(tasks, self._stop, self.crash)
        finally:
            await self._shutdown(tasks)
        if failed is not None:
            name, error = failed
            if isinstance(error, EdgefleetError):
                raise error
            raise TaskFailed(
                f"the agent's {name} task failed with {type(error).__name__}: {error}; the "
                "agent stopped without a clean disconnect (the broker publishes its will). Fix "
                "the cause in the log above; a service manager (systemd Restart=on-failure) "
                "restarts it meanwhile"
            ) from error

    async def _shutdown(self, tasks: list[asyncio.Task[None]]) -> None:
        """Stop the tasks; flush, say "offline" and DISCONNECT unless this is a crash."""
        assert self.transport is not None
        assert self.outbox is not None
        for t in tasks[2:]:
            t.cancel()
        await asyncio.gather(*tasks[2:], return_exceptions=True)
        await self.training.end(crashed=self._crashed)
        if self._crashed:
            self.transport.abort()
            self.uplink.stop()
        else:
            await self.uplink.flush()
            self.uplink.stop()
            await self.transport.close(self.link.status("offline", "shutdown"))
        tasks[0].cancel()
        await asyncio.gather(tasks[0], tasks[1], return_exceptions=True)
        await asyncio.get_running_loop().run_in_executor(self.db_executor, self.outbox.close)
        if self.source is not None:
            await close_source(self.source)
        for pool in self._own:
            pool.shutdown(wait=False, cancel_futures=True)

    def stop(self) -> None:
        """Shut down cleanly: flush to the outbox, publish "offline", DISCONNECT."""
        self._stop.set()

    def crash(self) -> None:
        """Die as a power cut would: no flush, no offline status, no DISCONNECT (the LWT fires)."""
        self._crashed = True
        self.training.abort()  # the SuperNode's whole process group dies with us
        if self.transport is not None:
            self.transport.abort()
        self._stop.set()

    def _open_outbox(self) -> Outbox:
        o = self.cfg.outbox
        box = Outbox(
            self.cfg.outbox_path,
            max_records=o.max_records,
            max_bytes=o.max_bytes,
            training_samples_max=o.training_samples_max,
            synchronous=o.synchronous,
        )
        box.register_boot(self.sequencer.boot_id, self.clock())
        return box

    # ------------------------------------------------------------------ AgentControl

    def event(
        self, kind: str, level: Level, message: str, data: dict[str, Scalar] | None = None
    ) -> None:
        """Queue an event record on ``event/{kind}``."""
        self.reports.event(kind, level, message, data)

    def flush_soon(self) -> None:
        """Write queued records now rather than at the next flush tick (acks, events)."""
        if self._uplink is not None and not self._crashed:
            asyncio.get_running_loop().create_task(self._uplink.flush())

    async def report_health(self) -> None:
        """Queue one ``health/1`` record now (as the health loop does every interval)."""
        await self.reports.report_health()

    async def assign_model(self, cmd: AssignModel) -> None:
        """Download, verify, check, smoke-test and activate a bundle; ack the outcome."""
        await self.installer.assign_model(cmd)

    async def start_training(self, cmd: StartTraining) -> None:
        """Join a federated run with the serving model's training samples; ack the outcome."""
        await self.training.start_training(cmd, self.model_ref[0], self.outbox)

    async def set_config(self, cmd: SetConfig) -> None:
        """Apply whitelisted runtime settings, or refuse naming the offending key."""
        try:
            new = apply_runtime_change(self.cfg, cmd.values)
        except ConfigError as exc:
            self.commands.ack(cmd, "refused", exc.reason, str(exc))
            return
        self.cfg = new
        self.uplink.cfg = new.uplink
        if self.outbox is not None and "outbox.max_records" in cmd.values:
            box, cap = self.outbox, new.outbox.max_records
            # On the outbox's own thread: it is the one writer, and the cap applies at its writes.
            await asyncio.get_running_loop().run_in_executor(
                self.db_executor, setattr, box, "max_records", cap
            )
        self.commands.ack(cmd, "succeeded", None, ", ".join(sorted(cmd.values)))
