"""The agent: wires source, pipeline, runtime, outbox, uplink, transport, health and delivery.

Everything is injected (event loop, executors, transport factory, clock, source) and nothing
lives at module level, so the simulator can run hundreds of agents in one process on one loop.
Inference runs in ``executor`` (one thread on a device), SQLite in ``db_executor`` (the one
writer), downloads in ``io_executor``; the event loop only moves data and bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from edgefleet.edge.commands import CommandHandler
from edgefleet.edge.config import AgentConfig, apply_runtime_change
from edgefleet.edge.delivery import Delivery
from edgefleet.edge.errors import TaskFailed
from edgefleet.edge.fl.buffer import encode_sample
from edgefleet.edge.fl.errors import FlDisabled, FlError
from edgefleet.edge.fl.manager import TrainingManager
from edgefleet.edge.health import LatencyWindow, SystemProbe
from edgefleet.edge.outbox import Outbox
from edgefleet.edge.pipeline import Pipeline
from edgefleet.edge.runtime import load_runtime
from edgefleet.edge.sequencer import Sequencer
from edgefleet.edge.slots import Hook, Slots
from edgefleet.edge.sources import Source, attach_reporter, close_source, make_source
from edgefleet.edge.transport.base import LinkHandler, Transport
from edgefleet.edge.transport.mqtt import MqttTransport, Will
from edgefleet.edge.uplink import Uplink
from edgefleet.edge.verify import Verifier, make_verifier
from edgefleet.protocol import topics
from edgefleet.protocol.codec import get_codec
from edgefleet.protocol.errors import ConfigError, EdgefleetError
from edgefleet.protocol.messages import (
    AssignModel,
    DriftSketch,
    Event,
    Health,
    Scalar,
    SetConfig,
    StartTraining,
    Status,
)

log = logging.getLogger(__name__)

TransportFactory = Callable[["Agent", LinkHandler], Transport]


def agent_version() -> str:
    """The installed edgefleet version."""
    try:
        return metadata.version("edgefleet")
    except metadata.PackageNotFoundError:  # pragma: no cover - bare checkout
        return "0+unknown"


class Agent(LinkHandler):
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
        self.pipeline: Pipeline | None = None
        self.latency = LatencyWindow()
        self.probe = SystemProbe()
        self.commands = CommandHandler(self)
        self.transport: Transport | None = None
        self.outbox: Outbox | None = None
        self._uplink: Uplink | None = None
        self._stop = asyncio.Event()
        self._crashed = False
        self._delivering = False
        self._windows_since_sketch = 0
        self._windows_since_sample = 0
        self._sketch_start = 0.0
        # Federated learning: a SuperNode child process, never Flower in this process.
        self.fl: TrainingManager | None = None
        if cfg.fl.enabled:
            self.fl = TrainingManager(
                cfg.fl,
                db=cfg.outbox_path,
                state_dir=cfg.data_dir / "fl",
                io_executor=self.io_executor,
                logger=logging.getLogger(f"edgefleet.edge.fl.supernode.{self.device_id}"),
            )
        self._training: asyncio.Task[None] | None = None
        self.source_done = asyncio.Event()
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
    def model_ref(self) -> tuple[str | None, str | None]:
        """(name, version) of the model serving now."""
        p = self.pipeline
        return (p.model, p.model_version) if p is not None else (None, None)

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
            on_store_error=self._store_error,
        )
        if self.source is None:
            self.source = make_source(cfg.source, self.io_executor, self.clock)
        attach_reporter(self.source, self.event)
        if self.verifier is None:
            self.verifier = make_verifier(cfg.model.verify, cfg.model.trusted_keys)
        self.delivery = Delivery(
            cfg.delivery,
            self.slots,
            self.verifier,
            self.source.channels,
            cfg.data_dir / "downloads",
            sample_rate_hz=self.source.rate_hz,
        )
        # Archives and partial downloads a previous run left behind (a crash mid-download).
        await loop.run_in_executor(self.io_executor, self.delivery.sweep)
        await self._load_model(self.verifier)
        factory = self._transport_factory or _mqtt_factory
        self.transport = factory(self, self)
        self.uplink.transport = self.transport
        tasks = [
            loop.create_task(self.transport.run(), name="transport"),
            loop.create_task(self.uplink.run(), name="uplink"),
            loop.create_task(self._infer_loop(), name="infer"),
            loop.create_task(self._health_loop(), name="health"),
        ]
        if self.fl is not None and self.cfg.fl.mode == "always":
            try:
                await self.fl.start_always()
                log.info("%s: federated learning: the SuperNode is always on", self.device_id)
            except FlError as exc:
                log.error("federated learning: %s", exc)
                self.event("fl", "error", f"the SuperNode did not start: {exc}")
        self.ready.set()
        self._log_serving()
        failed: tuple[str, BaseException] | None = None
        try:
            failed = await self._supervise(tasks)
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
        await self._end_training()
        if self._crashed:
            self.transport.abort()
            self.uplink.stop()
        else:
            await self.uplink.flush()
            self.uplink.stop()
            await self.transport.close(self._status("offline", "shutdown"))
        tasks[0].cancel()
        await asyncio.gather(tasks[0], tasks[1], return_exceptions=True)
        await asyncio.get_running_loop().run_in_executor(self.db_executor, self.outbox.close)
        if self.source is not None:
            await close_source(self.source)
        for pool in self._own:
            pool.shutdown(wait=False, cancel_futures=True)

    async def _supervise(self, tasks: list[asyncio.Task[None]]) -> tuple[str, BaseException] | None:
        """Wait for :meth:`stop`/:meth:`crash`, or for a task to fail: return (name, error).

        A device whose inference, uplink, transport or health task died would keep its
        retained "online" status while doing nothing; failing the whole agent instead lets
        the will announce it and a service manager restart it. The inference task ending
        without an error (the source ran out of data) is not a failure.
        """
        stopped = asyncio.ensure_future(self._stop.wait())
        watched: set[asyncio.Future[Any]] = set(tasks)
        try:
            while True:
                done, _ = await asyncio.wait(
                    watched | {stopped}, return_when=asyncio.FIRST_COMPLETED
                )
                if stopped in done:
                    return None
                for task in done:
                    watched.discard(task)
                    if task.cancelled():
                        continue
                    exc = task.exception()
                    if exc is not None:
                        name = task.get_name() if isinstance(task, asyncio.Task) else "agent"
                        log.error(
                            "the %s task failed: stopping without a clean disconnect",
                            name,
                            exc_info=exc,
                        )
                        self.crash()
                        return name, exc
        finally:
            stopped.cancel()

    def stop(self) -> None:
        """Shut down cleanly: flush to the outbox, publish "offline", DISCONNECT."""
        self._stop.set()

    def crash(self) -> None:
        """Die as a power cut would: no flush, no offline status, no DISCONNECT (the LWT fires)."""
        self._crashed = True
        if self.fl is not None:
            self.fl.abort()  # the SuperNode's whole process group dies with us
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

    async def _load_model(self, verifier: Verifier) -> None:
        """Serve the active slot's bundle (re-verified), else install the configured one."""
        loop = asyncio.get_running_loop()
        path = self.slots.active_path()
        if path is not None:
            try:
                bundle = await loop.run_in_executor(self.io_executor, verifier.verify, path)
                runtime = await loop.run_in_executor(
                    self.executor,
                    lambda: load_runtime(
                        bundle.path,
                        bundle.manifest,
                        override=self.cfg.model.runtime,
                        threads=self.cfg.model.threads,
                    ),
                )
                self.pipeline = Pipeline(
                    runtime,
                    bundle.manifest,
                    self.source.channels,  # type: ignore[union-attr]
                    bins=self.cfg.drift.bins,
                )
                self._log_loaded(f"the active slot ({path})")
                return
            except EdgefleetError as exc:
                log.error("the active model no longer verifies (%s); trying the previous one", exc)
                if self.slots.rollback() is not None:
                    return await self._load_model(verifier)
        if self.cfg.model.bundle:
            staged = await loop.run_in_executor(
                self.io_executor, self.delivery.stage, Path(self.cfg.model.bundle), None
            )
            runtime = await loop.run_in_executor(
                self.executor,
                self.delivery.smoke_test,
                staged,
                self.cfg.model.runtime,
                self.cfg.model.threads,
            )
            await loop.run_in_executor(self.io_executor, self.delivery.activate, staged)
            self.pipeline = Pipeline(
                runtime,
                staged.bundle.manifest,
                self.source.channels,  # type: ignore[union-attr]
                bins=self.cfg.drift.bins,
            )
            self._log_loaded(f"model.bundle {self.cfg.model.bundle}")
        else:
            log.info(
                "%s: no model installed (no model.bundle, empty slots): publishing health only "
                "until the cloud assigns one",
                self.device_id,
            )

    def _log_loaded(self, origin: str) -> None:
        pipe = self.pipeline
        assert pipe is not None
        spec = pipe.manifest.inputs[0]
        log.info(
            "%s: model loaded: %s version %s on the %s runtime (%s; input %s %s) from %s",
            self.device_id,
            pipe.model,
            pipe.model_version,
            pipe.runtime.name,
            getattr(pipe.runtime, "backend", pipe.runtime.name),
            spec.dtype,
            spec.shape,
            origin,
        )

    def _log_serving(self) -> None:
        source, pipe = self.source, self.pipeline
        assert source is not None
        where = (
            f"{self.cfg.source.kind} source, channels {list(source.channels)} at "
            f"{source.rate_hz:g} Hz"
        )
        if pipe is None:
            log.info("%s: running without a model: %s", self.device_id, where)
            return
        seconds = pipe.window / source.rate_hz
        log.info(
            "%s: serving %s@%s: %s, windows of %d samples (%.3g s), hop %d",
            self.device_id,
            pipe.model,
            pipe.model_version,
            where,
            pipe.window,
            seconds,
            pipe.hop,
        )

    # ------------------------------------------------------------------ loops

    async def _infer_loop(self) -> None:
        loop = asyncio.get_running_loop()
        source = self.source
        assert source is not None
        uplink = self.uplink
        rate = source.rate_hz
        self._sketch_start = self.clock()
        while not self._stop.is_set():
            chunk = await source.read()
            if chunk is None:
                await uplink.flush()
                self.source_done.set()
                return
            pipe = self.pipeline
            if self.cfg.uplink.publish_readings:
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
            self._windows_since_sketch += len(results)
            self._windows_since_sample += len(results)
            every = self.cfg.drift.every_windows
            if every and self._windows_since_sketch >= every:
                self._windows_since_sketch = 0
                self._emit_drift(pipe)
            sample_every = self.cfg.fl.sample_every_windows
            if sample_every and self._windows_since_sample >= sample_every:
                self._windows_since_sample = 0
                self._buffer_sample(pipe, self.clock())

    def _emit_drift(self, pipe: Pipeline) -> None:
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

        self.uplink.add_message("drift", topic, build)
        if not self.cfg.fl.sample_every_windows:
            self._buffer_sample(pipe, end)

    def _buffer_sample(self, pipe: Pipeline, t: float) -> None:
        """Keep the newest model input for federated training (only where FL is enabled).

        Keyed by model *name*, as the ClientApp reads it (``TrainingBuffer.load(model=...)``):
        a new version of the model keeps training on what the old one saw. Bytes are
        little-endian float32 (``encode_sample``), whatever the device's byte order.
        """
        x = pipe.last_input
        if x is None or self.outbox is None or not self.cfg.fl.enabled:
            return
        data, _ = encode_sample(x.reshape(-1))
        asyncio.get_running_loop().run_in_executor(
            self.db_executor, self.outbox.add_training_sample, t, pipe.model, data, None
        )

    async def _health_loop(self) -> None:
        while not self._stop.is_set():
            await asyncio.sleep(self.cfg.health.interval_s)
            await self.report_health()

    async def report_health(self) -> None:
        """Sample the host and queue one ``health/1`` record (the health loop's tick)."""
        loop = asyncio.get_running_loop()
        topic = topics.telemetry(self.fleet, self.device_id, "health")
        sample = await loop.run_in_executor(self.io_executor, self.probe.sample)
        pct = self.latency.percentiles()
        model, version = self.model_ref
        now = self.clock()
        up, uptime = self.uplink, self.probe.uptime_s()

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
            )

        up.add_message("health", topic, build)

    # ------------------------------------------------------------------ link events

    def on_connected(self) -> None:
        """Replay the outbox on every new session."""
        self.uplink.on_connected()

    def on_disconnected(self) -> None:
        """Nothing to undo: unacknowledged rows stay in the outbox."""

    def on_message(self, topic: str, payload: bytes) -> None:
        """A command arrived."""
        self.commands.handle(topic, payload)

    def on_published(self) -> None:
        """A PUBACK freed a publish slot."""
        self.uplink.wake()

    # ------------------------------------------------------------------ messages

    def _status(
        self, state: Literal["online", "offline"], reason: Literal["start", "shutdown", "lwt"]
    ) -> tuple[str, bytes]:
        model, version = self.model_ref
        msg = Status(
            device_id=self.device_id,
            boot_id=self.sequencer.boot_id,
            seq=0,
            sent_at=self.clock(),
            state=state,
            reason=reason,
            agent_version=self.version,
            model=model,
            model_version=version,
            profile=self.delivery.profile(
                None if self.pipeline is None else self.pipeline.manifest
            ),
        )
        return topics.status(self.fleet, self.device_id), self.codec.encode(msg)

    def birth(self) -> tuple[str, bytes]:
        """The retained "online" status sent on every connection."""
        return self._status("online", "start")

    def will(self) -> Will:
        """The retained "offline" status the broker sends if this agent dies."""
        topic, payload = self._status("offline", "lwt")
        return Will(topic, payload)

    def event(
        self,
        kind: str,
        level: Literal["debug", "info", "warning", "error", "critical"],
        message: str,
        data: dict[str, Scalar] | None = None,
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

        self.uplink.add_message("event", topics.event(self.fleet, self.device_id, kind), build)
        self.flush_soon()

    def _store_error(self, message: str, failures: int) -> None:
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

    def flush_soon(self) -> None:
        """Write queued records now rather than at the next flush tick (acks, events)."""
        if self._uplink is not None and not self._crashed:
            asyncio.get_running_loop().create_task(self._uplink.flush())

    # ------------------------------------------------------------------ commands

    async def assign_model(self, cmd: AssignModel) -> None:
        """Download, verify, check, smoke-test and activate a bundle; ack the outcome."""
        if self._delivering:
            self.commands.ack(cmd, "refused", "busy", "another model is being installed")
            return
        self._delivering = True
        loop = asyncio.get_running_loop()
        staged = None
        before = self.model_ref
        serving = f"{before[0]}@{before[1]}" if before[0] is not None else "no model"
        log.info(
            "%s: installing %s@%s (command %s), serving %s meanwhile",
            self.device_id,
            cmd.model,
            cmd.version,
            cmd.command_id,
            serving,
        )
        try:
            d = self.delivery
            archive = await loop.run_in_executor(self.io_executor, d.fetch, cmd)
            try:
                staged = await loop.run_in_executor(self.io_executor, d.stage, archive, cmd)
            finally:
                # Unpacked (or refused): the archive is no longer needed on the SD card.
                await loop.run_in_executor(self.io_executor, d.forget, archive)
            runtime = await loop.run_in_executor(
                self.executor,
                d.smoke_test,
                staged,
                cmd.runtime or self.cfg.model.runtime,
                self.cfg.model.threads,
            )
            assert self.source is not None
            pipeline = Pipeline(
                runtime, staged.bundle.manifest, self.source.channels, bins=self.cfg.drift.bins
            )
            await loop.run_in_executor(self.io_executor, d.activate, staged)
            # The swap itself: the next chunk goes to the new pipeline.
            self.pipeline = pipeline
            staged = None
            log.info(
                "%s: model swapped: %s -> %s@%s on the %s runtime (command %s)",
                self.device_id,
                serving,
                cmd.model,
                cmd.version,
                runtime.name,
                cmd.command_id,
            )
            self.commands.ack(
                cmd,
                "succeeded",
                None,
                f"serving {cmd.model}@{cmd.version}",
                {"model": cmd.model, "version": cmd.version},
            )
        except EdgefleetError as exc:
            status = "failed" if exc.reason in ("download-failed",) else "refused"
            log.warning(
                "%s: %s model %s@%s (command %s): %s: %s; still serving %s",
                self.device_id,
                status,
                cmd.model,
                cmd.version,
                cmd.command_id,
                exc.reason,
                exc,
                serving,
            )
            self.commands.ack(cmd, status, exc.reason, str(exc))
        except Exception as exc:  # a runtime's own error while loading: report, keep serving
            log.exception(
                "%s: installing %s@%s failed; still serving %s",
                self.device_id,
                cmd.model,
                cmd.version,
                serving,
            )
            self.commands.ack(cmd, "failed", "internal", f"{type(exc).__name__}: {exc}")
        finally:
            if staged is not None:
                with contextlib.suppress(OSError):
                    await loop.run_in_executor(self.io_executor, self.delivery.discard, staged)
            self._delivering = False

    async def start_training(self, cmd: StartTraining) -> None:
        """Join a federated run: check, run a SuperNode until the run ends or the deadline, ack.

        Refusals (``fl-disabled``, ``wrong-model``, ``busy``, ``training-refused``,
        ``no-training-data``, ``superlink-mismatch``) change nothing; a SuperNode that cannot
        start is a ``failed`` ack with reason ``supernode``.
        """
        fl = self.fl
        model = self.model_ref[0]
        samples: int | None = None
        if fl is not None and self.outbox is not None and model == cmd.model:
            box = self.outbox
            samples = await asyncio.get_running_loop().run_in_executor(
                self.db_executor, box.training_sample_count, cmd.model
            )
        try:
            if fl is None:
                raise FlDisabled("federated learning is not enabled here ([fl] enabled = false)")
            fl.check(cmd, model, samples)
        except FlError as exc:
            log.info(
                "%s: refused federated training %s: %s: %s",
                self.device_id,
                cmd.command_id,
                exc.reason,
                exc,
            )
            self.commands.ack(cmd, "refused", exc.reason, str(exc))
            return
        if self.cfg.fl.mode == "always":
            self.commands.ack(
                cmd, "succeeded", None, f"the SuperNode is always on ({cmd.superlink})"
            )
            return
        self.commands.ack(cmd, "received", None, f"starting a SuperNode for {cmd.superlink}")
        log.info(
            "%s: federated training session %s started: model %s, SuperLink %s",
            self.device_id,
            cmd.command_id,
            cmd.model,
            cmd.superlink,
        )
        self._training = asyncio.current_task()
        try:
            end = await fl.run_session(cmd)
        except FlError as exc:
            log.error("federated training could not start: %s", exc)
            self.commands.ack(cmd, "failed", exc.reason, str(exc))
            return
        finally:
            self._training = None
        log.info(
            "%s: federated training session %s ended: %s%s%s",
            self.device_id,
            cmd.command_id,
            end.status,
            f" ({end.reason})" if end.reason else "",
            f": {end.detail}" if end.detail else "",
        )
        self.commands.ack(cmd, end.status, end.reason, end.detail, dict(end.data))

    async def _end_training(self) -> None:
        """Stop the SuperNode; a clean stop lets the session ack ``failed``/``stopped`` first."""
        fl, task = self.fl, self._training
        if fl is None:
            return
        if self._crashed:
            fl.abort()
            if task is not None:
                task.cancel()
            return
        await fl.close()
        if task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(task), 15)

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


def _mqtt_factory(agent: Agent, handler: LinkHandler) -> Transport:
    cfg = agent.cfg
    return MqttTransport(
        cfg.mqtt,
        agent.device_id,
        handler,
        subscriptions=topics.device_command_filters(agent.fleet, agent.device_id),
        will=agent.will,
        birth=agent.birth,
    )
