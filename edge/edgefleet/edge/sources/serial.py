"""The serial source: samples from a microcontroller over ``edgefleet.firmware_bridge.SerialLink``.

Framed mode (COBS frames with a CRC, docs/serial-protocol.md) is the default; line mode reads
the CSV or JSON lines most existing sketches print. The link reads on the event loop (no thread),
reopens the port when it vanishes and reappears, and counts every frame or line it drops; this
source turns its sample batches into fixed-size chunks and reports the link's counters.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Literal, NamedTuple

import numpy as np

from edgefleet.edge.errors import SourceError
from edgefleet.edge.sources.base import Chunk, EventSink
from edgefleet.firmware_bridge import (
    ChannelMap,
    CommandFailed,
    CommandNacked,
    LinkClosed,
    LinkError,
    LinkTimeout,
    LogLine,
    NackCode,
    Ping,
    PortUnavailable,
    Reading,
    Reboot,
    SampleBatch,
    SerialLink,
    SetActuator,
    SetSampleRate,
    Status,
)
from edgefleet.firmware_bridge import Command as BridgeCommand
from edgefleet.firmware_bridge.messages import STATUS_FLAG_BOOT
from edgefleet.protocol.messages import (
    McuAction,
    McuActuator,
    McuPing,
    McuReboot,
    McuSetSampleRate,
    Scalar,
)

log = logging.getLogger(__name__)

# Host and MCU clocks drift apart; past this much the MCU-to-host offset is measured again.
_REANCHOR_S = 1.0


class McuOutcome(NamedTuple):
    """How a forwarded MCU command ended, as the fields of the cloud's command ack."""

    status: Literal["succeeded", "failed", "refused"]
    reason: str | None
    detail: str
    data: dict[str, Scalar]


class SerialSource:
    """Chunks of ``chunk`` samples from one serial port, in the order the MCU took them.

    The link is opened on the first :meth:`read` (on the running event loop); a port that is not
    there yet is waited for up to ``open_timeout`` s (0: as long as it takes). Rows of a batch
    that do not fit a chunk are kept for the next one. A batch whose width is not the number of
    ``channels`` is dropped and counted (``wrong_width``); corrupt frames and lines never get
    here: the bridge drops and counts them. ``set_reporter`` gives the agent's event sink:
    port lost/back and MCU reboots are reported at once, new drop counts at most every
    ``report_interval`` s.
    """

    def __init__(
        self,
        port: str,
        *,
        baud: int = 115200,
        mode: Literal["framed", "line"] = "framed",
        fmt: Literal["csv", "json"] = "csv",
        channels: Sequence[str],
        columns: Sequence[str] = (),
        time_key: str | None = None,
        time_scale: float = 1.0,
        rate_hz: float = 400.0,
        chunk: int = 40,
        read_timeout: float = 5.0,
        open_timeout: float = 0.0,
        reconnect_min: float = 0.1,
        reconnect_max: float = 2.0,
        report_interval: float = 30.0,
        executor: Executor | None = None,  # unused: the link reads on the loop; kept for callers
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not channels:
            raise SourceError('a serial source needs source.channels, e.g. ["ax", "ay", "az"]')
        if mode not in ("framed", "line"):
            raise SourceError(f'source.mode must be "framed" or "line", not {mode!r}')
        channel_map = None
        if mode == "line":
            channel_map = line_channel_map(channels, fmt, columns, time_key, time_scale)
        self.channels = tuple(channels)
        self.rate_hz = float(rate_hz)
        self.port = port
        self.mode = mode
        self._link = SerialLink(
            port,
            baud,
            mode=mode,
            channels=self.channels,
            channel_map=channel_map,
            read_timeout=read_timeout,
            reconnect_interval=reconnect_min,
            reconnect_max_interval=reconnect_max,
        )
        self._chunk = chunk
        self._open_timeout = open_timeout
        self._report_interval = report_interval
        self._clock = clock
        self._opened = False
        self._closing: asyncio.Task[None] | None = None
        self._reporter: EventSink | None = None
        self._rows: list[tuple[float, ...]] = []
        self._t0 = 0.0  # host time of self._rows[0]
        self._offset: float | None = None  # host time - MCU time
        self._last_mcu_t = 0.0
        self._offset_conn = 0
        self._connects_seen = 0
        self._disconnects_seen = 0
        self._errors_reported = 0
        self._next_report = 0.0
        # This source's own counters; the link's are in counters().
        self.samples = 0
        self.chunks = 0
        self.wrong_width = 0
        self.mcu_reboots = 0
        self.log_lines = 0

    @property
    def link(self) -> SerialLink:
        """The bridge link (its ``stats`` hold the decoder and connection counters)."""
        return self._link

    def set_reporter(self, sink: EventSink | None) -> None:
        """Where to send events about the link (the agent passes its ``event`` method)."""
        self._reporter = sink

    def counters(self) -> dict[str, int]:
        """The link's counters (``error.<reason>``, ``connects``...) and this source's own."""
        out = self._link.stats.snapshot()
        out.update(
            samples=self.samples,
            chunks=self.chunks,
            wrong_width=self.wrong_width,
            mcu_reboots=self.mcu_reboots,
            log_lines=self.log_lines,
        )
        return out

    # ------------------------------------------------------------------ reading

    async def _open(self) -> None:
        self._opened = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._open_timeout
        delay = self._link.reconnect_interval
        waiting = False
        while True:
            try:
                await self._link.open()
                return
            except PortUnavailable as exc:
                if self._open_timeout and loop.time() >= deadline:
                    raise SourceError(f"serial port {self.port} is not there: {exc}") from None
                if not waiting:
                    waiting = True
                    log.warning("waiting for serial port %s: %s", self.port, exc)
                    self._event("warning", f"waiting for serial port {self.port}")
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._link.reconnect_max_interval)

    async def read(self) -> Chunk | None:
        """The next ``chunk`` samples; a shorter chunk after ``read_timeout`` s of silence.

        None only once the source is closed.
        """
        if not self._opened:
            await self._open()
        link = self._link
        while len(self._rows) < self._chunk:
            try:
                reading = await link.receive()
            except LinkTimeout:
                self._watch()
                if self._rows:
                    break
                continue
            except LinkClosed:
                if self._rows:
                    break
                return None
            self._take(reading)
        self._watch()
        return self._cut()

    def _take(self, reading: Reading) -> None:
        if isinstance(reading, SampleBatch):
            width = len(reading.values[0])
            if width != len(self.channels):
                self.wrong_width += 1
                return
            if self._link.stats.connects != self._offset_conn:
                self._offset_conn = self._link.stats.connects
                self._offset = None  # a new connection: maybe a rebooted MCU, a new clock
            t = self._host_time(reading)
            if not self._rows:
                self._t0 = t
            self._rows.extend(reading.values)
        elif isinstance(reading, Status):
            if reading.flags & STATUS_FLAG_BOOT:
                self.mcu_reboots += 1
                self._offset = None
                self._event("info", f"microcontroller on {self.port} (re)booted")
        elif isinstance(reading, LogLine):
            self.log_lines += 1
            log.info("mcu %s: %s", self.port, reading.text)

    def _host_time(self, batch: SampleBatch) -> float:
        """Host wall time of the batch's first row, from the MCU clock and a measured offset."""
        n = len(batch.values)
        period = batch.period if batch.period > 0 else 1.0 / self.rate_hz
        last = batch.t0 + (n - 1) * period
        if (
            self._offset is None
            or last < self._last_mcu_t
            or abs(batch.received_at - (last + self._offset)) > _REANCHOR_S
        ):
            self._offset = batch.received_at - last
        self._last_mcu_t = last
        return batch.t0 + self._offset

    def _cut(self) -> Chunk:
        n = min(self._chunk, len(self._rows))
        rows = self._rows[:n]
        del self._rows[:n]
        t0 = self._t0
        self._t0 = t0 + n / self.rate_hz
        self.samples += n
        self.chunks += 1
        return Chunk(t0, np.asarray(rows, dtype=np.float32).reshape(n, len(self.channels)))

    # ------------------------------------------------------------------ commands

    async def mcu_command(self, action: McuAction) -> McuOutcome:
        """Send a cloud ``mcu`` action to the MCU (ack and retry); never raises."""
        op = str(type(action).__struct_config__.tag)
        data: dict[str, Scalar] = {"op": op, "port": self.port}
        if self.mode != "framed":
            why = f"{self.port} is read in line mode: a sketch printing lines takes no commands"
            return McuOutcome("refused", "line-mode", why, data)
        try:
            command = _bridge_command(action)
        except ValueError as exc:
            return McuOutcome("refused", "bad-args", str(exc), data)
        if not self._opened or self._link.stats.connects == 0:
            why = f"{self.port} has not been opened yet; retry once the agent reads it"
            return McuOutcome("failed", "not-connected", why, data)
        try:
            ack = await self._link.send_command(command)
        except CommandNacked as exc:
            try:
                data["nack"] = NackCode(exc.code).name.lower()
            except ValueError:
                data["nack"] = exc.code
            return McuOutcome("failed", exc.reason, str(exc), data)
        except (CommandFailed, LinkError) as exc:
            return McuOutcome("failed", exc.reason, str(exc), data)
        data["mcu_seq"] = ack.acked_seq
        return McuOutcome("succeeded", None, f"{self.port} acked {op}", data)

    # ------------------------------------------------------------------ reporting

    def _watch(self) -> None:
        """Report connection changes at once and new drops at most every report interval."""
        stats = self._link.stats
        if stats.disconnects != self._disconnects_seen:
            self._disconnects_seen = stats.disconnects
            log.warning("serial port %s is gone; reopening it when it is back", self.port)
            self._event("warning", f"serial port {self.port} lost")
        if stats.connects != self._connects_seen:
            if self._connects_seen:
                log.info("serial port %s is back", self.port)
                self._event("info", f"serial port {self.port} back")
            self._connects_seen = stats.connects
        dec = stats.decoder
        errors = dec.error_total + dec.lost_frames + self.wrong_width + stats.queue_drops
        now = time.monotonic()
        if errors != self._errors_reported and now >= self._next_report:
            dropped = errors - self._errors_reported
            self._errors_reported = errors
            self._next_report = now + self._report_interval
            self._event("warning", f"{dropped} frames/lines lost, corrupt or unusable")

    def _event(self, level: Literal["info", "warning"], message: str) -> None:
        if self._reporter is not None:
            data: dict[str, str | int | float | bool | None] = {"port": self.port}
            data.update(self.counters())
            self._reporter("serial", level, message, data)

    # ------------------------------------------------------------------ closing

    async def aclose(self) -> None:
        """Close the link and wait until the port is released."""
        if self._closing is not None:
            await self._closing
        await self._link.close()

    def close(self) -> None:
        """Close the link; on a running loop the port is released as soon as the loop runs."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # the link only ever opens on a loop; none runs, so nothing is open
        if self._closing is None:
            self._closing = loop.create_task(self._link.close())


def _bridge_command(action: McuAction) -> BridgeCommand:
    """The serial-protocol command for a cloud action; ValueError when its values do not fit."""
    match action:
        case McuSetSampleRate(hz=hz):
            return SetSampleRate(hz)
        case McuActuator(index=index, value=value):
            return SetActuator(index, value)
        case McuReboot():
            return Reboot()
        case McuPing():
            return Ping()
    raise ValueError(f"no MCU command for {action!r}")


def line_channel_map(
    channels: Sequence[str],
    fmt: Literal["csv", "json"],
    columns: Sequence[str] = (),
    time_key: str | None = None,
    time_scale: float = 1.0,
) -> ChannelMap:
    """The bridge's ChannelMap for line mode; SourceError names what does not fit."""
    try:
        return ChannelMap(
            channels=tuple(channels),
            format=fmt,
            columns=tuple(columns),
            time_key=time_key or None,
            time_scale=time_scale,
        )
    except ValueError as exc:
        raise SourceError(
            f"serial line mode: {exc} (check source.channels, source.columns, source.time_key)"
        ) from None
