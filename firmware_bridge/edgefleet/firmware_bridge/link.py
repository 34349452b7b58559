"""SerialLink: an asyncio serial link to one microcontroller that survives unplugging."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Literal, Self

import serial

from edgefleet.firmware_bridge.base import ByteDecoder, DecoderStats
from edgefleet.firmware_bridge.decoder import FrameDecoder
from edgefleet.firmware_bridge.errors import (
    CommandNacked,
    CommandTimeout,
    LinkClosed,
    LinkError,
    LinkTimeout,
    PortUnavailable,
)
from edgefleet.firmware_bridge.frames import SEQ_MODULO, encode_frame
from edgefleet.firmware_bridge.lines import ChannelMap, LineDecoder
from edgefleet.firmware_bridge.messages import (
    Ack,
    Command,
    InferenceResult,
    LogLine,
    Message,
    Nack,
    NackCode,
    SampleBatch,
    Status,
)

Mode = Literal["framed", "line"]
Reading = SampleBatch | Status | LogLine | InferenceResult
_READ_CHUNK: Final = 65536


def _framed(channels: Sequence[str], channel_map: ChannelMap | None) -> ByteDecoder:
    return FrameDecoder(channels)


def _line(channels: Sequence[str], channel_map: ChannelMap | None) -> ByteDecoder:
    return LineDecoder(channel_map or ChannelMap(channels=tuple(channels)))


# The mode option picks the decoder backend (docs: firmware_bridge/README.md).
MODES: Final[dict[str, Callable[[Sequence[str], ChannelMap | None], ByteDecoder]]] = {
    "framed": _framed,
    "line": _line,
}


@dataclass(slots=True)
class LinkStats:
    """Counters of one link: its decoder's plus connection and command accounting."""

    decoder: DecoderStats
    connects: int = 0
    disconnects: int = 0
    timeouts: int = 0
    queue_drops: int = 0
    commands: int = 0
    command_retries: int = 0
    acks: int = 0
    nacks: int = 0

    def snapshot(self) -> dict[str, int]:
        """A flat copy of every counter."""
        out = self.decoder.snapshot()
        out.update(
            connects=self.connects,
            disconnects=self.disconnects,
            timeouts=self.timeouts,
            queue_drops=self.queue_drops,
            commands=self.commands,
            command_retries=self.command_retries,
            acks=self.acks,
            nacks=self.nacks,
        )
        return out


class SerialLink:
    """An asyncio link to one microcontroller over a serial port (framed or line mode).

    ``async with SerialLink(port) as link: async for reading in link: ...`` yields
    :class:`SampleBatch`, :class:`Status`, :class:`LogLine` and :class:`InferenceResult` values.
    Reads run on the event loop through ``loop.add_reader`` (no thread per link). When the port
    disappears (end of file or an I/O error) the link closes it and reopens the same path
    every ``reconnect_interval`` seconds, backing off to ``reconnect_max_interval``; iteration
    just resumes. ``read_timeout`` bounds the wait of :meth:`receive` (:class:`LinkTimeout`);
    ``async for`` waits through such silences (an unplugged cable, a stalled MCU) and only
    counts them in ``stats.timeouts``. At most ``queue_size`` readings wait for the consumer;
    beyond that the oldest are dropped and counted.
    """

    def __init__(
        self,
        port: str,
        baud: int = 115200,
        *,
        mode: Mode = "framed",
        channels: Sequence[str] = (),
        channel_map: ChannelMap | None = None,
        read_timeout: float | None = 5.0,
        open_timeout: float = 0.0,
        reconnect: bool = True,
        reconnect_interval: float = 0.1,
        reconnect_max_interval: float = 2.0,
        ack_timeout: float = 0.5,
        retries: int = 3,
        queue_size: int = 4096,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {sorted(MODES)}, not {mode!r}")
        self.port = port
        self.baud = baud
        self.mode: Mode = mode
        self.read_timeout = read_timeout
        self.open_timeout = open_timeout
        self.reconnect = reconnect
        self.reconnect_interval = reconnect_interval
        self.reconnect_max_interval = reconnect_max_interval
        self.ack_timeout = ack_timeout
        self.retries = retries
        self.decoder = MODES[mode](channels, channel_map)
        self.stats = LinkStats(self.decoder.stats)
        self._queue: asyncio.Queue[Reading | None] = asyncio.Queue(maxsize=queue_size)
        self._serial: serial.Serial | None = None
        self._closed = True
        self._reconnector: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._pending: dict[int, asyncio.Future[Ack | Nack]] = {}
        self._tx_seq = 0

    # ------------------------------------------------------------------ lifecycle

    @property
    def connected(self) -> bool:
        """True while the port is open."""
        return self._serial is not None

    async def open(self) -> Self:
        """Open the port, retrying up to ``open_timeout`` s; raises PortUnavailable."""
        self._closed = False
        deadline = time.monotonic() + self.open_timeout
        while True:
            try:
                self._attach()
                return self
            except PortUnavailable:
                if time.monotonic() >= deadline:
                    self._closed = True
                    raise
            await asyncio.sleep(self.reconnect_interval)

    async def close(self) -> None:
        """Close the port and end iteration; pending commands fail with LinkClosed."""
        if self._closed:
            return
        self._closed = True
        if self._reconnector is not None:
            self._reconnector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnector
        self._detach()
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(LinkClosed(f"link to {self.port} closed"))
        self._push(None)

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def wait_connected(self, within: float | None = None) -> None:
        """Wait up to ``within`` s until the port is open (again); raises LinkTimeout."""
        try:
            await asyncio.wait_for(self._connected.wait(), within)
        except TimeoutError:
            raise LinkTimeout(f"{self.port} did not come back within {within} s") from None

    def _attach(self) -> None:
        try:
            # timeout=0: pyserial opens the fd non-blocking, and the loop tells us when to read.
            ser = serial.Serial(self.port, self.baud, timeout=0, write_timeout=0)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise PortUnavailable(f"cannot open {self.port}: {exc}") from None
        self._serial = ser
        self.decoder.reset()
        asyncio.get_running_loop().add_reader(ser.fileno(), self._on_readable)
        self.stats.connects += 1
        self._connected.set()

    def _detach(self) -> None:
        ser, self._serial = self._serial, None
        self._connected.clear()
        if ser is None:
            return
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(ser.fileno())
        with contextlib.suppress(Exception):
            ser.close()

    def _lost(self) -> None:
        self._detach()
        self.stats.disconnects += 1
        if self.reconnect and not self._closed:
            self._reconnector = asyncio.get_running_loop().create_task(self._reconnect())
        elif not self._closed:
            self._closed = True
            self._push(None)

    async def _reconnect(self) -> None:
        delay = self.reconnect_interval
        while not self._closed:
            await asyncio.sleep(delay)
            try:
                self._attach()
                return
            except PortUnavailable:
                delay = min(delay * 2, self.reconnect_max_interval)

    # ------------------------------------------------------------------ reading

    def _on_readable(self) -> None:
        ser = self._serial
        if ser is None:
            return
        try:
            data = os.read(ser.fileno(), _READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            # End of file or EIO: the device is gone (unplugged, or the pty's master closed).
            self._lost()
            return
        for msg in self.decoder.feed(data):
            self._deliver(msg)

    def _deliver(self, msg: Message) -> None:
        if isinstance(msg, Ack | Nack):
            fut = self._pending.get(msg.acked_seq)
            if fut is not None and not fut.done():
                fut.set_result(msg)
            return
        if isinstance(msg, SampleBatch | Status | LogLine | InferenceResult):
            self._push(msg)
        # Command frames travel host -> MCU only; one arriving here is ignored.

    def _push(self, item: Reading | None) -> None:
        while True:
            try:
                self._queue.put_nowait(item)
                return
            except asyncio.QueueFull:
                # A slow consumer loses the oldest readings, never the newest, and we count it.
                self._queue.get_nowait()
                self.stats.queue_drops += 1

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Reading:
        while True:
            try:
                return await self.receive()
            except LinkTimeout:
                # Silence is no end: the link reconnects on its own. receive() counted it in
                # stats.timeouts; a consumer that must act on silence calls receive() itself.
                continue
            except LinkClosed:
                raise StopAsyncIteration from None

    async def receive(self, within: float | None = -1.0) -> Reading:
        """The next reading; waits ``within`` s (default: ``read_timeout``, None: forever)."""
        timeout = self.read_timeout if within is not None and within < 0 else within
        if self._closed and self._queue.empty():
            raise LinkClosed(f"link to {self.port} is closed")
        try:
            item = await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            self.stats.timeouts += 1
            state = "connected" if self.connected else "disconnected"
            raise LinkTimeout(f"nothing from {self.port} ({state}) for {timeout} s") from None
        if item is None:
            self._push(None)  # leave the end marker for any other waiter
            raise LinkClosed(f"link to {self.port} is closed")
        return item

    # ------------------------------------------------------------------ commands

    async def send_command(
        self, command: Command, *, ack_timeout: float | None = None, retries: int | None = None
    ) -> Ack:
        """Send ``command`` and wait for its ACK, resending the same frame on silence.

        The MCU recognises a resent frame by its sequence number and acks it again without
        running the command twice. Raises CommandNacked or CommandTimeout.
        """
        if self.mode != "framed":
            raise LinkError("commands need a framed link; line mode only reads")
        if self._closed:
            raise LinkClosed(f"link to {self.port} is closed")
        wait = self.ack_timeout if ack_timeout is None else ack_timeout
        tries = 1 + (self.retries if retries is None else retries)
        seq = self._tx_seq
        self._tx_seq = (seq + 1) % SEQ_MODULO
        frame = encode_frame(command, seq)
        fut: asyncio.Future[Ack | Nack] = asyncio.get_running_loop().create_future()
        self._pending[seq] = fut
        self.stats.commands += 1
        try:
            for attempt in range(tries):
                if attempt:
                    self.stats.command_retries += 1
                try:
                    await self._write(frame, wait)
                    reply = await asyncio.wait_for(asyncio.shield(fut), wait)
                except (LinkError, TimeoutError):
                    if self._closed:
                        raise LinkClosed(f"link to {self.port} closed") from None
                    continue
                return self._settle(reply, command)
        finally:
            self._pending.pop(seq, None)
        raise CommandTimeout(
            f"no ack from {self.port} for {type(command).__name__} after {tries} tries"
        )

    def _settle(self, reply: Ack | Nack, command: Command) -> Ack:
        if isinstance(reply, Ack):
            self.stats.acks += 1
            return reply
        self.stats.nacks += 1
        try:
            why = NackCode(reply.code).name.lower()
        except ValueError:
            why = f"code {reply.code}"
        raise CommandNacked(f"{self.port} refused {command!r}: {why}", code=reply.code)

    async def _write(self, data: bytes, within: float) -> None:
        deadline = time.monotonic() + within
        view = memoryview(data)
        while view:
            ser = self._serial
            if ser is None:
                await self.wait_connected(max(0.0, deadline - time.monotonic()))
                continue
            try:
                view = view[os.write(ser.fileno(), view) :]
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LinkTimeout(f"{self.port} does not take bytes") from None
                await asyncio.sleep(0.005)
            except OSError as exc:
                raise LinkError(f"write to {self.port} failed: {exc}") from None
