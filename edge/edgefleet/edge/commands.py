"""Commands from the cloud: parse, check, dispatch, and always answer or log."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Literal, Protocol

import msgspec

from edgefleet.edge.config import AgentConfig
from edgefleet.edge.sequencer import Sequencer
from edgefleet.edge.uplink import Uplink
from edgefleet.protocol import topics
from edgefleet.protocol.codec import check_topic, decode
from edgefleet.protocol.commandauth import CommandGuard, load_command_keys, load_record_key
from edgefleet.protocol.errors import AuthError, EdgefleetError, ProtocolError
from edgefleet.protocol.messages import (
    AssignModel,
    Command,
    CommandAck,
    Commit,
    McuCommand,
    Scalar,
    SetConfig,
    StartTraining,
)

log = logging.getLogger(__name__)
_REMEMBER = 256
# A flood of forged commands must not flood the log (or the outbox: refusals are counted in
# health, never queued as events), so a refusal is logged at most this often.
_LOG_EVERY_S = 10.0
NO_COMMAND_KEYS = (
    "no [trust] command_keys configured: every command (commit-acks too) is refused; "
    "copy the cloud's keys/command.pub to the device and list it there"
)


class _Peek(msgspec.Struct):
    command_id: str = ""


class AgentControl(Protocol):
    """What a command may do to the agent: the agent implements it, commands see nothing more.

    A new command is one handler in :class:`CommandHandler` plus, where it acts on the
    agent, one method here.
    """

    @property
    def cfg(self) -> AgentConfig:
        """The agent's settings (``[trust]`` holds the command keys)."""
        ...

    @property
    def device_id(self) -> str:
        """The device the acks come from."""
        ...

    @property
    def fleet(self) -> str:
        """The fleet the acks are published in."""
        ...

    @property
    def sequencer(self) -> Sequencer:
        """Numbers this boot's records (an ack carries the boot id)."""
        ...

    @property
    def clock(self) -> Callable[[], float]:
        """The agent's clock (expiry checks, ack times)."""
        ...

    @property
    def uplink(self) -> Uplink:
        """Where acks are queued and cloud commits land."""
        ...

    @property
    def source(self) -> object:
        """The source, which may forward microcontroller commands (``mcu_command``)."""
        ...

    def event(
        self,
        kind: str,
        level: Literal["debug", "info", "warning", "error", "critical"],
        message: str,
        data: dict[str, Scalar] | None = None,
    ) -> None:
        """Queue an event record on ``event/{kind}``."""

    def flush_soon(self) -> None:
        """Write queued records (an ack) now rather than at the next flush tick."""

    async def assign_model(self, cmd: AssignModel) -> None:
        """Install the assigned model and ack the outcome."""

    async def set_config(self, cmd: SetConfig) -> None:
        """Apply runtime settings and ack the outcome."""

    async def start_training(self, cmd: StartTraining) -> None:
        """Join a federated run and ack the outcome."""


class CommandHandler:
    """Turns command messages into agent actions and acks; malformed ones change nothing."""

    def __init__(self, agent: AgentControl) -> None:
        self.agent = agent
        # Redelivered QoS 1 commands (persistent sessions) must not run twice.
        self._done: OrderedDict[str, CommandAck | None] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self.rejected = 0
        trust = agent.cfg.trust
        self.record_key = load_record_key(Path(trust.record_key)) if trust.record_key else None
        keys = load_command_keys(trust.command_keys) if trust.command_keys else []
        self.guard = CommandGuard(agent.device_id, keys, self.record_key, clock=agent.clock)
        self.trust_error = None if keys else NO_COMMAND_KEYS
        self._logged_at = -_LOG_EVERY_S
        if self.trust_error:
            log.error("%s: %s", agent.device_id, self.trust_error)

    def handle(self, topic: str, payload: bytes) -> None:
        """Handle one message from a command subscription (event-loop thread)."""
        try:
            parsed = topics.parse(topic)
        except ProtocolError as exc:
            self._bad(topic, exc, payload)
            return
        if parsed.kind is not topics.Kind.CMD:
            return
        try:
            msg = decode(payload)
            check_topic(parsed, msg)
        except ProtocolError as exc:
            self._bad(topic, exc, payload, parsed.name)
            return
        if self._authentic(topic, payload, msg):
            self._dispatch(msg)

    def _dispatch(self, msg: Any) -> None:
        if isinstance(msg, Commit):
            self._spawn(self._commit(msg))
            return
        assert isinstance(msg, Command)
        if msg.command_id in self._done:
            ack = self._done[msg.command_id]
            if ack is not None:
                self._send(ack.command, msg.command_id, ack.status, ack.reason, ack.detail)
            return
        self._done[msg.command_id] = None
        while len(self._done) > _REMEMBER:
            self._done.popitem(last=False)
        if msg.expires_at is not None and msg.expires_at < self.guard.now():
            self.ack(msg, "refused", "expired", "the command expired before it arrived")
            return
        if isinstance(msg, AssignModel):
            self.ack(msg, "received", None, f"downloading {msg.model}@{msg.version}")
            self._spawn(self.agent.assign_model(msg))
        elif isinstance(msg, SetConfig):
            self._spawn(self.agent.set_config(msg))
        elif isinstance(msg, McuCommand):
            self._spawn(self._mcu(msg))
        else:
            assert isinstance(msg, StartTraining)  # COMMANDS lists no other kinds
            self._spawn(self.agent.start_training(msg))

    def _authentic(self, topic: str, payload: bytes, msg: Any) -> bool:
        """Whether ``msg`` passed the command check; a refusal is counted, never acked.

        No ack and no event: either would let a forger make the device publish (and queue in
        its outbox) at the forger's rate.
        """
        if self.trust_error:
            self.guard.refused["no-command-keys"] += 1
            self._log_refusal(topic, self.trust_error)
            return False
        try:
            self.guard.check(topic, payload, msg)
        except AuthError as exc:
            self._log_refusal(topic, f"{exc.reason}: {exc}")
            return False
        return True

    def _log_refusal(self, topic: str, why: str) -> None:
        now = time.monotonic()
        if now - self._logged_at < _LOG_EVERY_S:
            return
        self._logged_at = now
        total = sum(self.guard.refused.values())
        log.warning("refused command on %s: %s (%d refused so far)", topic, why, total)

    async def _commit(self, msg: Commit) -> None:
        await self.agent.uplink.on_commit(msg)

    async def _mcu(self, msg: McuCommand) -> None:
        # Duck-typed: only a source with a microcontroller behind it (serial) can forward one.
        forward = getattr(self.agent.source, "mcu_command", None)
        if forward is None:
            kind = type(self.agent.source).__name__
            why = f"this device reads a {kind}, not a microcontroller (source.kind serial)"
            self.ack(msg, "refused", "no-mcu", why)
            return
        out = await forward(msg.action)
        self.ack(msg, out.status, out.reason, out.detail, out.data)

    def ack(
        self,
        cmd: Command,
        status: str,
        reason: str | None = None,
        detail: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        """Queue an ack for ``cmd`` (through the outbox: acks are records too)."""
        name = str(type(cmd).__struct_config__.tag).split("/")[0]
        ack = self._send(name, cmd.command_id, status, reason, detail, data)
        if status != "received":
            self._done[cmd.command_id] = ack

    def _send(  # noqa: PLR0917 - the fields of one ack
        self,
        name: str,
        command_id: str,
        status: str,
        reason: str | None,
        detail: str | None,
        data: dict[str, Any] | None = None,
    ) -> CommandAck:
        a = self.agent
        proto = CommandAck(
            device_id=a.device_id,
            boot_id=a.sequencer.boot_id,
            seq=0,
            sent_at=a.clock(),
            command_id=command_id,
            command=name,
            status=status,  # type: ignore[arg-type]
            reason=reason,
            detail=(detail or "")[:4000] or None,
            data=data or {},
        )

        def build(boot: str, seq: int) -> CommandAck:
            return msgspec.structs.replace(proto, boot_id=boot, seq=seq, sent_at=a.clock())

        a.uplink.add_message("cmd-ack", topics.command_ack(a.fleet, a.device_id, name), build)
        a.flush_soon()
        return proto

    def _bad(
        self, topic: str, exc: EdgefleetError, payload: bytes, name: str | None = None
    ) -> None:
        """A command we cannot run: ack it refused if it names itself, else log an event."""
        self.rejected += 1
        log.warning("refused command on %s: %s", topic, exc)
        peek_id = ""
        with contextlib.suppress(msgspec.DecodeError, UnicodeDecodeError):
            peek_id = msgspec.json.decode(payload, type=_Peek).command_id
        if peek_id and name and name in _known_names():
            try:
                topics.validate_id(peek_id, "command id")
                self._send(name, peek_id, "refused", exc.reason, str(exc))
                return
            except ProtocolError:
                pass
        self.agent.event(
            "bad-command",
            "warning",
            f"{topic}: {exc}",
            {"topic": topic[:200], "reason": exc.reason},
        )

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _known_names() -> set[str]:
    from edgefleet.protocol.messages import COMMANDS

    return set(COMMANDS) - {"commit"}
