"""The agent's training sessions: its SuperNode manager, start-training commands and stops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import Literal

from edgefleet.edge.commands import CommandHandler
from edgefleet.edge.fl.config import FlConfig
from edgefleet.edge.fl.errors import FlDisabled, FlError
from edgefleet.edge.fl.manager import TrainingManager
from edgefleet.edge.outbox import Outbox
from edgefleet.protocol.messages import StartTraining

# One logger name for every line the agent writes, whichever of its role modules writes it.
log = logging.getLogger("edgefleet.edge.agent")

EventSink = Callable[[str, Literal["error"], str], None]


class TrainingSessions:
    """Federated learning on this device: a SuperNode child process, never Flower in this one."""

    def __init__(
        self,
        cfg: FlConfig,
        commands: CommandHandler,
        *,
        device_id: str,
        db: Path,
        state_dir: Path,
        io_executor: Executor,
        db_executor: Executor,
    ) -> None:
        self.cfg = cfg
        self.commands = commands
        self.device_id = device_id
        self._db_executor = db_executor
        self.manager: TrainingManager | None = None
        if cfg.enabled:
            self.manager = TrainingManager(
                cfg,
                db=db,
                state_dir=state_dir,
                io_executor=io_executor,
                logger=logging.getLogger(f"edgefleet.edge.fl.supernode.{device_id}"),
            )
        self._session: asyncio.Task[None] | None = None

    async def start_always(self, event: EventSink) -> None:
        """With ``mode = "always"``, start the SuperNode now; a failure is logged and an event."""
        if self.manager is None or self.cfg.mode != "always":
            return
        try:
            await self.manager.start_always()
            log.info("%s: federated learning: the SuperNode is always on", self.device_id)
        except FlError as exc:
            log.error("federated learning: %s", exc)
            event("fl", "error", f"the SuperNode did not start: {exc}")

    async def start_training(
        self, cmd: StartTraining, model: str | None, outbox: Outbox | None
    ) -> None:
        """Join a federated run: check, run a SuperNode until the run ends or the deadline, ack.

        ``model`` is the name of the model serving now. Refusals (``fl-disabled``,
        ``wrong-model``, ``busy``, ``training-refused``, ``no-training-data``,
        ``superlink-mismatch``) change nothing; a SuperNode that cannot start is a ``failed``
        ack with reason ``supernode``.
        """
        fl = self.manager
        samples: int | None = None
        if fl is not None and outbox is not None and model == cmd.model:
            samples = await asyncio.get_running_loop().run_in_executor(
                self._db_executor, outbox.training_sample_count, cmd.model
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
        if self.cfg.mode == "always":
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
        self._session = asyncio.current_task()
        try:
            end = await fl.run_session(cmd)
        except FlError as exc:
            log.error("federated training could not start: %s", exc)
            self.commands.ack(cmd, "failed", exc.reason, str(exc))
            return
        finally:
            self._session = None
        log.info(
            "%s: federated training session %s ended: %s%s%s",
            self.device_id,
            cmd.command_id,
            end.status,
            f" ({end.reason})" if end.reason else "",
            f": {end.detail}" if end.detail else "",
        )
        self.commands.ack(cmd, end.status, end.reason, end.detail, dict(end.data))

    def abort(self) -> None:
        """Kill the SuperNode's whole process group now (the agent is crashing)."""
        if self.manager is not None:
            self.manager.abort()

    async def end(self, *, crashed: bool) -> None:
        """Stop the SuperNode; a clean stop lets the session ack ``failed``/``stopped`` first."""
        fl, task = self.manager, self._session
        if fl is None:
            return
        if crashed:
            fl.abort()
            if task is not None:
                task.cancel()
            return
        await fl.close()
        if task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(task), 15)
