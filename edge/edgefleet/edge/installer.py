"""The model installer: serves the active slot at start-up, installs and swaps assigned models."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path

from edgefleet.edge.commands import CommandHandler
from edgefleet.edge.config import AgentConfig
from edgefleet.edge.delivery import Delivery
from edgefleet.edge.pipeline import Pipeline
from edgefleet.edge.runtime import load_runtime
from edgefleet.edge.slots import Slots
from edgefleet.edge.sources import Source
from edgefleet.edge.verify import Verifier
from edgefleet.protocol.errors import BundleError, EdgefleetError
from edgefleet.protocol.manifest import semver_key
from edgefleet.protocol.messages import AssignModel, DeviceProfile

# One logger name for every line the agent writes, whichever of its role modules writes it.
log = logging.getLogger("edgefleet.edge.agent")


class Installer:
    """Owns the serving pipeline: loads it at start-up, swaps in an assigned model, or refuses."""

    def __init__(
        self,
        config: Callable[[], AgentConfig],
        slots: Slots,
        commands: CommandHandler,
        *,
        device_id: str,
        executor: Executor,
        io_executor: Executor,
    ) -> None:
        self._config = config
        self.slots = slots
        self.commands = commands
        self.device_id = device_id
        self.executor = executor
        self.io_executor = io_executor
        self.pipeline: Pipeline | None = None
        self._delivery: Delivery | None = None
        self._source: Source | None = None
        self._busy = False

    @property
    def delivery(self) -> Delivery:
        """The delivery (available once :meth:`start` has run)."""
        assert self._delivery is not None, "the agent is not running"
        return self._delivery

    @property
    def model_ref(self) -> tuple[str | None, str | None]:
        """(name, version) of the model serving now."""
        p = self.pipeline
        return (p.model, p.model_version) if p is not None else (None, None)

    def profile(self) -> DeviceProfile:
        """What this device offers a model, serving what it serves (its status's ``profile``)."""
        return self.delivery.profile(None if self.pipeline is None else self.pipeline.manifest)

    async def start(self, source: Source, verifier: Verifier) -> None:
        """Sweep what a previous run left behind, then serve the active or configured model."""
        cfg = self._config()
        self._source = source
        self._delivery = Delivery(
            cfg.delivery,
            self.slots,
            verifier,
            source.channels,
            cfg.data_dir / "downloads",
            sample_rate_hz=source.rate_hz,
        )
        loop = asyncio.get_running_loop()
        # Archives and partial downloads a previous run left behind (a crash mid-download).
        await loop.run_in_executor(self.io_executor, self._delivery.sweep)
        await self._load(verifier, source)

    async def _load(self, verifier: Verifier, source: Source) -> None:
        """Serve the active slot's bundle (re-verified), else install the configured one."""
        loop = asyncio.get_running_loop()
        cfg = self._config()
        path = self.slots.active_path()
        if path is not None:
            try:
                bundle = await loop.run_in_executor(self.io_executor, verifier.verify, path)
                runtime = await loop.run_in_executor(
                    self.executor,
                    lambda: load_runtime(
                        bundle.path,
                        bundle.manifest,
                        override=cfg.model.runtime,
                        threads=cfg.model.threads,
                    ),
                )
                self.pipeline = Pipeline(
                    runtime, bundle.manifest, source.channels, bins=cfg.drift.bins
                )
                self._log_loaded(f"the active slot ({path})")
                return
            except EdgefleetError as exc:
                log.error("the active model no longer verifies (%s); trying the previous one", exc)
                if self.slots.rollback() is not None:
                    return await self._load(verifier, source)
        if cfg.model.bundle:
            d = self.delivery
            staged = await loop.run_in_executor(
                self.io_executor, d.stage, Path(cfg.model.bundle), None
            )
            runtime = await loop.run_in_executor(
                self.executor, d.smoke_test, staged, cfg.model.runtime, cfg.model.threads
            )
            await loop.run_in_executor(self.io_executor, d.activate, staged)
            self.pipeline = Pipeline(
                runtime, staged.bundle.manifest, source.channels, bins=cfg.drift.bins
            )
            self._log_loaded(f"model.bundle {cfg.model.bundle}")
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

    def log_serving(self) -> None:
        """One line saying what the agent serves from what (or that it serves no model)."""
        source, pipe = self._source, self.pipeline
        assert source is not None
        where = (
            f"{self._config().source.kind} source, channels {list(source.channels)} at "
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

    def _check_not_older(self, cmd: AssignModel, before: tuple[str | None, str | None]) -> None:
        """Refuse a version older than the one serving unless the signed command says rollback.

        An attacker who replays an old, validly signed bundle must not be able to bring back
        a version with a known flaw; an operator who means it sets ``rollback``.
        """
        name, version = before
        if cmd.rollback or name != cmd.model or version is None:
            return
        try:
            older = semver_key(cmd.version) < semver_key(version)
        except ValueError:
            return  # not semantic: the manifest check refuses it with its own reason
        if older:
            raise BundleError(
                f"{cmd.model}@{cmd.version} is older than {version}, which this device serves; "
                "assign it with --rollback if that is intended",
                reason="downgrade",
            )

    async def assign_model(self, cmd: AssignModel) -> None:
        """Download, verify, check, smoke-test and activate a bundle; ack the outcome."""
        if self._busy:
            self.commands.ack(cmd, "refused", "busy", "another model is being installed")
            return
        self._busy = True
        loop = asyncio.get_running_loop()
        cfg = self._config()
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
            self._check_not_older(cmd, before)
            d = self.delivery
            archive = await loop.run_in_executor(self.io_executor, d.fetch, cmd)
            try:
                staged = await loop.run_in_executor(self.io_executor, d.stage, archive, cmd)
            finally:
                # Unpacked (or refused): the archive is no longer needed on the SD card.
                await loop.run_in_executor(self.io_executor, d.forget, archive)
            expires = staged.bundle.manifest.expires_at
            if expires is not None and expires < self.commands.guard.now():
                raise BundleError(
                    f"the bundle's manifest expired at {expires:.0f} (cloud time); "
                    "build and sign a fresh one",
                    reason="bundle-expired",
                )
            runtime = await loop.run_in_executor(
                self.executor,
                d.smoke_test,
                staged,
                cmd.runtime or cfg.model.runtime,
                cfg.model.threads,
            )
            assert self._source is not None
            pipeline = Pipeline(
                runtime, staged.bundle.manifest, self._source.channels, bins=cfg.drift.bins
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
            self._busy = False
