"""The agent's side of federated learning: refusals, the SuperNode's life, how a session ended.

The agent owns one :class:`TrainingManager` when ``[fl] enabled = true``. It never imports
Flower: it spawns ``flower-supernode`` through a :class:`SuperNodeSupervisor` (in its own
process group) whose ClientApp notes each round in a status file (:mod:`.progress`), which is
how the agent learns that the run is over for this device. Use it from the agent's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

import msgspec

from edgefleet.edge.fl.config import FlConfig, supernode_command
from edgefleet.edge.fl.errors import (
    FlDisabled,
    NoTrainingData,
    SuperLinkMismatch,
    TrainingBusy,
    TrainingRefused,
    WrongModel,
)
from edgefleet.edge.fl.policy import DeviceProbe, SystemProbe, refusal
from edgefleet.edge.fl.progress import RoundNote, read_notes
from edgefleet.edge.fl.supervisor import SuperNodeSupervisor
from edgefleet.protocol.messages import Scalar, StartTraining

POLL_S = 0.5


@dataclass(frozen=True, slots=True)
class SessionEnd:
    """How a training session ended, as the device acks it."""

    status: Literal["succeeded", "failed"]
    reason: str | None
    detail: str
    data: dict[str, Scalar] = field(default_factory=dict)


def summarise(notes: list[RoundNote], ended: str, cmd: StartTraining) -> SessionEnd:
    """The ack of a session from the rounds its ClientApp noted and why it ended."""
    trained = [n for n in notes if n.outcome == "trained"]
    total = max((n.rounds for n in notes), default=0) or (cmd.rounds or 0)
    data: dict[str, Scalar] = {
        "rounds_trained": len(trained),
        "rounds": total,
        "ended": ended,
    }
    if cmd.run_id:
        data["run_id"] = cmd.run_id
    if ended == "stopped":
        return SessionEnd("failed", "stopped", "the agent stopped during training", data)
    if trained:
        first, last = trained[0], trained[-1]
        data["examples"] = last.examples
        if first.loss_before is not None:
            data["loss_before"] = first.loss_before
        if last.loss_after is not None:
            data["loss_after"] = last.loss_after
        detail = f"trained {len(trained)} of {total or '?'} round(s); ended by {ended}"
        return SessionEnd("succeeded", None, detail, data)
    if notes:
        last_note = notes[-1]
        return SessionEnd(
            "failed",
            last_note.reason or last_note.outcome,
            f"no round trained here: round {last_note.round} {last_note.outcome}",
            data,
        )
    return SessionEnd(
        "failed", "deadline", "no round reached this device before the deadline", data
    )


class TrainingManager:
    """Decides whether the device may train and runs its SuperNode for as long as it should."""

    def __init__(
        self,
        cfg: FlConfig,
        *,
        db: Path,
        state_dir: Path,
        io_executor: Executor,
        logger: logging.Logger,
        probe: DeviceProbe | None = None,
        now: Callable[[], datetime] = datetime.now,
    ) -> None:
        self.cfg = cfg
        self.db = Path(db).absolute()
        self.state_dir = Path(state_dir).absolute()
        self.io_executor = io_executor
        self.log = logger
        self.probe = probe if probe is not None else SystemProbe()
        self.now = now
        self.supervisor: SuperNodeSupervisor | None = None
        self.sessions = 0
        self._busy = False
        self._closing = asyncio.Event()

    @property
    def status_path(self) -> Path:
        """Where the ClientApp notes its rounds."""
        return self.state_dir / "rounds.jsonl"

    @property
    def busy(self) -> bool:
        """A session (or the always-on SuperNode) is running."""
        return self._busy or self.supervisor is not None

    def check(self, cmd: StartTraining, running: str | None, samples: int | None) -> None:
        """Raise the :class:`FlError` that refuses ``cmd`` now, if any.

        ``samples`` is how many inputs of the model the buffer holds (None: not counted yet).
        """
        if not self.cfg.enabled:
            raise FlDisabled("federated learning is not enabled here ([fl] enabled = false)")
        if cmd.model != running:
            raise WrongModel(f"this device serves {running or 'no model'}, not {cmd.model}")
        if self.cfg.mode == "always":
            if cmd.superlink != self.cfg.superlink:
                raise SuperLinkMismatch(
                    f"the always-on SuperNode dials {self.cfg.superlink}, not {cmd.superlink}"
                )
            return
        if self.busy:
            raise TrainingBusy("a training session is already running")
        why = refusal(self.cfg.policy(), self.probe, self.now())
        if why is not None:
            raise TrainingRefused(f"training refused: {why}")
        if samples is not None and samples < self.cfg.min_samples:
            raise NoTrainingData(
                f"the training buffer holds {samples} sample(s) of {cmd.model}; "
                f"at least {self.cfg.min_samples} needed"
            )

    def _supervisor(self, superlink: str) -> SuperNodeSupervisor:
        cfg = msgspec.structs.replace(self.cfg, superlink=superlink)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        extra: dict[str, str | float] = {"status": str(self.status_path)}
        return SuperNodeSupervisor(
            lambda: supernode_command(cfg, self.db, extra),
            self.log,
            restart_min_s=cfg.restart_min_s,
            restart_max_s=cfg.restart_max_s,
            stable_after_s=cfg.stable_after_s,
            cwd=self.state_dir,
        )

    async def start_always(self) -> None:
        """Start the always-on SuperNode (``mode = "always"``)."""
        sup = self._supervisor(self.cfg.superlink)
        await asyncio.get_running_loop().run_in_executor(self.io_executor, sup.start)
        self.supervisor = sup

    async def run_session(self, cmd: StartTraining) -> SessionEnd:
        """Run a SuperNode for ``cmd`` until the run ends here, the deadline, or :meth:`close`.

        Raises :class:`FlError` (``supernode``, ``bad-fl-config``) when it cannot start.
        """
        loop = asyncio.get_running_loop()
        self._busy = True
        try:
            self.status_path.unlink(missing_ok=True)
            sup = self._supervisor(cmd.superlink)
            await loop.run_in_executor(self.io_executor, sup.start)
            self.supervisor = sup
            self.sessions += 1
            try:
                ended = await self._watch(cmd)
            finally:
                self.supervisor = None
                await loop.run_in_executor(self.io_executor, sup.stop)
            return summarise(read_notes(self.status_path), ended, cmd)
        finally:
            self._busy = False

    async def _watch(self, cmd: StartTraining) -> str:
        deadline = time.monotonic() + (cmd.deadline_s or self.cfg.deadline_s)
        while True:
            notes = read_notes(self.status_path)
            total = max((n.rounds for n in notes), default=0) or (cmd.rounds or 0)
            if self._closing.is_set():
                return "stopped"
            if total and any(n.round >= total for n in notes):
                # The last reply still has to travel from the SuperNode to the SuperLink.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), self.cfg.end_grace_s)
                return "stopped" if self._closing.is_set() else "end of run"
            if time.monotonic() >= deadline:
                return "deadline"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), POLL_S)

    async def close(self) -> None:
        """Clean stop: end the session (its ack says so) and stop the SuperNode."""
        self._closing.set()
        sup, self.supervisor = self.supervisor, None
        if sup is not None:
            await asyncio.get_running_loop().run_in_executor(self.io_executor, sup.stop)

    def abort(self) -> None:
        """Crash: SIGKILL the SuperNode's whole process group now, wait for nothing."""
        self._closing.set()
        sup = self.supervisor
        if sup is not None:
            sup.abort()
