"""An emulated microcontroller that speaks the real protocol bytes over a pseudo-terminal.

The emulator owns the pty's master side; the bridge opens the slave like any serial port,
through a stable symlink (``path``) that survives unplug/replug: a pty's slave name changes
each time one is made, so replugging re-points the symlink, as udev's ``/dev/serial/by-id``
links do for a real USB device.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import tempfile
import time
import tty
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, Literal, Self

from edgefleet.firmware_bridge.base import SampleSource
from edgefleet.firmware_bridge.decoder import FrameDecoder
from edgefleet.firmware_bridge.errors import FrameError, PayloadInvalid
from edgefleet.firmware_bridge.frames import DELIMITER, SEQ_MODULO, Frame, encode_frame
from edgefleet.firmware_bridge.lines import ChannelMap
from edgefleet.firmware_bridge.messages import (
    MAX_BATCH_VALUES,
    MAX_RATE_HZ,
    STATUS_FLAG_BOOT,
    Ack,
    CommandCode,
    Message,
    MsgType,
    Nack,
    NackCode,
    Ping,
    Reboot,
    SampleBatch,
    SetActuator,
    SetSampleRate,
    Status,
)

ACTUATORS: Final = 4


@dataclass(frozen=True, slots=True)
class EmulatorConfig:
    """What the emulated MCU sends and which faults it injects (all rates per second)."""

    rate_hz: float = 100.0
    channels: int = 3
    batch: int = 10
    noise: float = 0.05
    garbage_every: float = 0.0
    garbage_max: int = 64
    drop_prob: float = 0.0
    disconnect_every: float = 0.0
    disconnect_for: float = 0.5
    mode: Literal["framed", "line"] = "framed"
    line_format: Literal["csv", "json"] = "csv"
    status_every: float = 1.0
    seed: int = 0
    history: int = 8192

    def __post_init__(self) -> None:
        if not 0 < self.rate_hz <= MAX_RATE_HZ:
            raise ValueError(f"rate_hz must be in (0, {MAX_RATE_HZ}]")
        if not 1 <= self.channels <= 255 or not 1 <= self.batch <= 255:
            raise ValueError("channels and batch must be in 1..255")
        if self.channels * self.batch > MAX_BATCH_VALUES:
            raise ValueError(f"channels * batch must be at most {MAX_BATCH_VALUES}")
        if not 0 <= self.drop_prob < 1 or self.noise < 0 or self.garbage_max < 1:
            raise ValueError("drop_prob must be in [0, 1), noise >= 0, garbage_max >= 1")
        if min(self.garbage_every, self.disconnect_every, self.disconnect_for) < 0:
            raise ValueError("intervals must not be negative")
        if self.mode not in ("framed", "line") or self.line_format not in ("csv", "json"):
            raise ValueError("mode must be framed or line, line_format csv or json")

    @property
    def channel_names(self) -> tuple[str, ...]:
        """The names the emulator gives its channels (the bridge's defaults)."""
        return tuple(f"ch{i}" for i in range(self.channels))

    def channel_map(self) -> ChannelMap:
        """The line-mode map that reads what this emulator prints."""
        return ChannelMap(
            channels=self.channel_names,
            format=self.line_format,
            columns=("t_ms", *self.channel_names) if self.line_format == "csv" else (),
            time_key="t_ms",
            time_scale=1e-3,
        )


@dataclass(slots=True)
class EmulatorStats:
    """What the emulator did, for tests and the CLI."""

    frames: int = 0
    bytes_sent: int = 0
    bytes_dropped: int = 0
    tx_dropped: int = 0  # bytes
    frames_dropped: int = 0  # frames not (wholly) sent, reported in each status as tx_dropped
    garbage_bytes: int = 0
    commands: int = 0
    nacks: int = 0
    duplicate_commands: int = 0
    unplugs: int = 0


class McuEmulator:
    """One emulated MCU on a pty; ``async with McuEmulator(cfg) as mcu: open(mcu.path)``.

    ``samples`` replaces the built-in waveform (sines plus seeded noise) with any
    :class:`~edgefleet.firmware_bridge.base.SampleSource`; its rows go out as they are.
    """

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        *,
        path: str | Path | None = None,
        samples: SampleSource | None = None,
    ) -> None:
        self.config = config or EmulatorConfig()
        self.samples = samples
        self._rows: deque[tuple[float, ...]] = deque()
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        if path is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="edgefleet-mcu-")
            path = Path(self._tmpdir.name) / "tty"
        self.path = str(path)
        self.stats = EmulatorStats()
        self.rate_hz = self.config.rate_hz
        self.actuators: dict[int, float] = {}
        self.commands: list[Message] = []
        # Fault knobs for tests: ignore the next N commands, or run them but lose their acks.
        self.deaf_commands = 0
        self.lost_acks = 0
        # Sent frames (before injected loss) by sequence number, so tests can check each one.
        self.sent: OrderedDict[int, bytes] = OrderedDict()
        # Simulated noise, not secrets: a seeded PRNG makes runs repeatable.
        self._rng = random.Random(self.config.seed)  # noqa: S311
        self._faults = random.Random(self.config.seed + 1)  # noqa: S311
        self._master: int | None = None
        self._slave: int | None = None
        self._seq = 0
        self._lines = 0
        self._t = 0.0
        self._boot = time.monotonic()
        self._booted = True
        self._last_cmd: tuple[int, Ack | Nack] | None = None
        self._cmd_decoder = FrameDecoder(on_error=self._on_bad_frame)
        self._tasks: list[asyncio.Task[None]] = []
        self._skip = self._next_drop()

    # ------------------------------------------------------------------ lifecycle

    @property
    def plugged(self) -> bool:
        """True while the pty exists and ``path`` points at it."""
        return self._master is not None

    async def start(self) -> Self:
        """Plug in and start sampling; returns self (``path`` is ready)."""
        self.plug()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._sampler()), loop.create_task(self._housekeeping())]
        return self

    async def stop(self) -> None:
        """Stop sampling and unplug; removes the temporary directory of ``path``."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        self.unplug()
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def run_forever(self) -> None:
        """Run until cancelled (Ctrl-C in ``edgefleet bridge emulate``)."""
        async with self:
            await asyncio.Event().wait()

    def plug(self) -> None:
        """Create a fresh pty and point ``path`` at its slave (a no-op when plugged)."""
        if self._master is not None:
            return
        master, slave = os.openpty()
        # Raw mode before anyone reads: no echo, no line editing, no 0x03 -> SIGINT.
        tty.setraw(slave)
        os.set_blocking(master, False)
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.symlink(os.ttyname(slave), tmp)
        os.replace(tmp, self.path)
        self._master, self._slave = master, slave
        self._cmd_decoder.reset()
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().add_reader(master, self._on_command_bytes)
        self._send_raw(DELIMITER)

    def unplug(self) -> None:
        """Close the pty (the bridge sees end of file) and remove ``path``."""
        master, slave = self._master, self._slave
        if master is None:
            return
        self._master = self._slave = None
        self.stats.unplugs += 1
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().remove_reader(master)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(master)
        if slave is not None:
            os.close(slave)

    def reboot(self) -> None:
        """Restart as after a reset: sequence numbers from 0, a status with the boot flag."""
        self._seq = 0
        self._boot = time.monotonic()
        self._booted = True
        self._last_cmd = None
        self._send_status()

    # ------------------------------------------------------------------ sending

    def _next_drop(self) -> int:
        p = self.config.drop_prob
        if p <= 0:
            return -1
        # Geometric gap to the next dropped byte: one draw per drop, not one per byte.
        return int(math.log(1.0 - self._faults.random()) / math.log(1.0 - p))

    def _lossy(self, data: bytes) -> bytes:
        if self._skip < 0:
            return data
        out = bytearray()
        pos = 0
        while pos + self._skip < len(data):
            out += data[pos : pos + self._skip]
            pos += self._skip + 1
            self.stats.bytes_dropped += 1
            self._skip = self._next_drop()
        self._skip -= len(data) - pos
        out += data[pos:]
        return bytes(out)

    def _send_raw(self, data: bytes) -> bool:
        """Write ``data`` as a USB CDC device would; False when not all of it went out."""
        if self._master is None:
            self.stats.tx_dropped += len(data)
            return False
        try:
            n = os.write(self._master, data)
        except BlockingIOError:
            n = 0  # nobody reads the port: a USB CDC device drops what it cannot send
        except OSError:
            n = 0
        self.stats.bytes_sent += n
        self.stats.tx_dropped += len(data) - n
        return n == len(data)

    def send(self, message: Message) -> int:
        """Send ``message`` as the next frame (with injected loss); returns its seq."""
        seq = self._seq
        self._seq = (seq + 1) % SEQ_MODULO
        frame = encode_frame(message, seq)
        self.stats.frames += 1
        if isinstance(message, SampleBatch):
            self.sent[seq] = frame
            while len(self.sent) > self.config.history:
                self.sent.popitem(last=False)
        if not self._send_raw(self._lossy(frame)):
            self.stats.frames_dropped += 1
        return seq

    def _sample(self) -> tuple[float, ...]:
        if self.samples is not None:
            if not self._rows:
                self._rows.extend(self._from_source(self.config.batch))
            return self._rows.popleft()
        noise = self.config.noise
        t = self._t
        return tuple(
            math.sin(2 * math.pi * (0.5 + 0.25 * c) * t)
            + (self._rng.gauss(0, noise) if noise else 0)
            for c in range(self.config.channels)
        )

    def _from_source(self, n: int) -> list[tuple[float, ...]]:
        assert self.samples is not None
        rows = [tuple(float(v) for v in row) for row in self.samples.read(n)]
        width = self.config.channels
        if len(rows) != n or any(len(r) != width for r in rows):
            shape = f"{len(rows)} rows of {sorted({len(r) for r in rows})} values"
            raise ValueError(
                f"the sample source gave {shape} for {n} rows of {width} values: give it as "
                f"many channels as EmulatorConfig.channels"
            )
        return rows

    def _emit_batch(self) -> None:
        cfg = self.config
        period = 1.0 / self.rate_hz
        if cfg.mode == "framed":
            t0 = round(self._t * 1e6) / 1e6
            rows = []
            for _ in range(cfg.batch):
                rows.append(self._sample())
                self._t += period
            self.send(SampleBatch(t0, round(period * 1e6) / 1e6, tuple(rows)))
            return
        for _ in range(cfg.batch):
            values = self._sample()
            t_ms = round(self._t * 1e3, 3)
            if cfg.line_format == "csv":
                line = ",".join([f"{t_ms}", *(f"{v:.5f}" for v in values)])
            else:
                pairs = ", ".join(
                    f'"{n}": {v:.5f}' for n, v in zip(cfg.channel_names, values, strict=True)
                )
                line = f'{{"t_ms": {t_ms}, {pairs}}}'
            data = (line + "\n").encode()
            self.sent[self._lines] = data
            self._lines += 1
            self._send_raw(self._lossy(data))
            self._t += period

    def _send_status(self) -> None:
        if self.config.mode != "framed":
            return
        uptime = int((time.monotonic() - self._boot) * 1000) % (1 << 32)
        flags = STATUS_FLAG_BOOT if self._booted else 0
        self._booted = False
        self.send(Status(uptime, self.rate_hz, self.stats.frames_dropped % 2**32, flags))

    async def _sampler(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            now = loop.time()
            interval = self.config.batch / self.rate_hz
            if now - due > 1.0:
                due = now  # the loop stalled: skip ahead rather than flood the port
            while due <= now:
                self._emit_batch()
                due += interval
            await asyncio.sleep(due - now)

    async def _housekeeping(self) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        next_status = loop.time()
        next_garbage = loop.time() + self._gap(cfg.garbage_every)
        next_unplug = loop.time() + (cfg.disconnect_every or math.inf)
        while True:
            now = loop.time()
            if now >= next_status:
                self._send_status()
                next_status = now + cfg.status_every
            if now >= next_garbage:
                burst = self._faults.randbytes(self._faults.randint(1, cfg.garbage_max))
                self.stats.garbage_bytes += len(burst)
                self._send_raw(burst)
                next_garbage = now + self._gap(cfg.garbage_every)
            if now >= next_unplug:
                self.unplug()
                await asyncio.sleep(cfg.disconnect_for)
                self.plug()
                next_unplug = loop.time() + cfg.disconnect_every
            await asyncio.sleep(max(0.0, min(next_status, next_garbage, next_unplug) - now))

    def _gap(self, mean: float) -> float:
        return self._faults.expovariate(1.0 / mean) if mean > 0 else math.inf

    # ------------------------------------------------------------------ commands

    def _on_command_bytes(self) -> None:
        if self._master is None:
            return
        try:
            data = os.read(self._master, 4096)
        except OSError:
            return
        if self.config.mode != "framed":
            return
        for frame in self._cmd_decoder.feed_frames(data):
            self._execute(frame)

    def _answered(self, seq: int) -> bool:
        """True when the command in frame ``seq`` needs no (new) run: deaf, or a resend."""
        if self.deaf_commands > 0:
            self.deaf_commands -= 1
            return True
        if self._last_cmd is not None and self._last_cmd[0] == seq:
            # A resent command whose ack got lost: answer again, do not run it twice.
            self.stats.duplicate_commands += 1
            self._reply(self._last_cmd[1])
            return True
        return False

    def _on_bad_frame(self, error: FrameError) -> None:
        # As the C firmware does, a command frame that passed the CRC but whose payload does
        # not parse (unknown code, wrong length, NaN) is NACKed, so the host learns why.
        if not isinstance(error, PayloadInvalid) or error.seq is None:
            return
        if error.msg_type != MsgType.COMMAND or self._answered(error.seq):
            return
        self._refuse(Nack(error.seq, error.command, error.nack))

    def _refuse(self, nack: Nack) -> None:
        self.stats.nacks += 1
        self._last_cmd = (nack.acked_seq, nack)
        self._reply(nack)

    def _execute(self, frame: Frame) -> None:
        cmd = frame.message
        if not isinstance(cmd, SetSampleRate | SetActuator | Reboot | Ping):
            return
        if self._answered(frame.seq):
            return
        self.stats.commands += 1
        self.commands.append(cmd)
        if isinstance(cmd, SetActuator) and cmd.index >= ACTUATORS:
            self._refuse(Nack(frame.seq, CommandCode.ACTUATOR, NackCode.BAD_ARGS))
            return
        reply = Ack(frame.seq, _code(cmd))
        self._last_cmd = (frame.seq, reply)
        self._reply(reply)
        if isinstance(cmd, SetSampleRate):
            self.rate_hz = cmd.hz
        elif isinstance(cmd, SetActuator):
            self.actuators[cmd.index] = cmd.value
        elif isinstance(cmd, Reboot):
            self.reboot()

    def _reply(self, reply: Ack | Nack) -> None:
        if self.lost_acks > 0:
            self.lost_acks -= 1
            self._seq = (self._seq + 1) % SEQ_MODULO  # sent, then lost on the wire
            return
        self.send(reply)


def _code(cmd: SetSampleRate | SetActuator | Reboot | Ping) -> CommandCode:
    codes: dict[type, CommandCode] = {
        SetSampleRate: CommandCode.SET_RATE,
        SetActuator: CommandCode.ACTUATOR,
        Reboot: CommandCode.REBOOT,
        Ping: CommandCode.PING,
    }
    return codes[type(cmd)]
