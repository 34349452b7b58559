"""Line mode: CSV or JSON lines as most existing sketches print them, mapped onto channels."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

from edgefleet.firmware_bridge.base import DecoderStats
from edgefleet.firmware_bridge.errors import MalformedLine, PartialLine
from edgefleet.firmware_bridge.messages import Message, SampleBatch

MAX_LINE_LENGTH: Final = 1024
LineFormat = Literal["auto", "csv", "json"]


@dataclass(frozen=True, slots=True)
class ChannelMap:
    """How a text line maps onto named channels.

    ``channels`` names the output channels in order (empty: every numeric field, named
    ``ch0``... for CSV and by key for JSON). ``columns`` names the CSV columns in order (empty:
    the columns are ``channels``). ``time_key`` names the column or key with the MCU's clock,
    in units of ``time_scale`` seconds (0.001 for ``millis()``); without it the host clock
    stamps each line.
    """

    channels: tuple[str, ...] = ()
    format: LineFormat = "auto"
    columns: tuple[str, ...] = ()
    time_key: str | None = None
    time_scale: float = 1.0
    delimiter: str = ","

    def __post_init__(self) -> None:
        if self.format not in ("auto", "csv", "json"):
            raise ValueError(f"line format must be auto, csv or json, not {self.format!r}")
        if len(set(self.channels)) != len(self.channels):
            raise ValueError("channel names must be unique")
        if self.columns and not set(self.channels) <= set(self.columns):
            missing = sorted(set(self.channels) - set(self.columns))
            raise ValueError(f"channels {missing} are not among the CSV columns")
        if self.time_key is not None and self.columns and self.time_key not in self.columns:
            raise ValueError(f"time_key {self.time_key!r} is not among the CSV columns")
        if self.time_scale <= 0 or len(self.delimiter) != 1:
            raise ValueError("time_scale must be positive and the delimiter one character")

    @classmethod
    def parse(cls, spec: str, **kwargs: Any) -> ChannelMap:
        """A map from a comma-separated channel list such as ``"ax,ay,az"`` (CLI option)."""
        names = tuple(n.strip() for n in spec.split(",") if n.strip())
        return cls(channels=names, **kwargs)


def _number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise MalformedLine(f"{name} is not a number: {value!r}")
    try:
        out = float(value)
    except ValueError:
        raise MalformedLine(f"{name} is not a number: {value!r}") from None
    if not math.isfinite(out):
        raise MalformedLine(f"{name} is not finite: {value!r}")
    return out


class LineParser:
    """Parses one line into a one-sample batch per a ChannelMap; raises MalformedLine."""

    def __init__(self, channel_map: ChannelMap, clock: Callable[[], float] = time.time) -> None:
        self.map = channel_map
        self._clock = clock
        self._auto_names: dict[int, tuple[str, ...]] = {}

    def parse(self, line: str) -> SampleBatch:
        """The sample held in ``line`` (without its newline)."""
        text = line.strip()
        if not text:
            raise MalformedLine("empty line")
        fmt = self.map.format
        if fmt == "json" or (fmt == "auto" and text.startswith("{")):
            names, values, t = self._json(text)
        else:
            names, values, t = self._csv(text)
        now = self._clock()
        t0 = now if t is None else t * self.map.time_scale
        if t0 < 0:
            raise MalformedLine(f"negative timestamp {t0}")
        return SampleBatch(t0, 0.0, (values,), channels=names, received_at=now)

    def _json(self, text: str) -> tuple[tuple[str, ...], tuple[float, ...], float | None]:
        try:
            obj = json.loads(text)
        except ValueError as exc:
            raise MalformedLine(f"not JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise MalformedLine("a JSON line must be an object")
        key = self.map.time_key
        t = _number(obj[key], key) if key is not None and key in obj else None
        if key is not None and t is None:
            raise MalformedLine(f"the time key {key!r} is missing")
        names = self.map.channels or tuple(k for k in obj if k != key)
        missing = [n for n in names if n not in obj]
        if missing or not names:
            raise MalformedLine(f"missing channels {missing}" if missing else "no channels")
        return names, tuple(_number(obj[n], n) for n in names), t

    def _csv(self, text: str) -> tuple[tuple[str, ...], tuple[float, ...], float | None]:
        fields = [f.strip() for f in text.split(self.map.delimiter)]
        columns = self.map.columns or (
            self.map.channels
            if self.map.time_key is None
            else (self.map.time_key, *self.map.channels)
        )
        if columns and len(fields) != len(columns):
            raise MalformedLine(f"{len(fields)} fields, expected {len(columns)} ({columns})")
        if not columns:
            names = self._auto_names.get(len(fields))
            if names is None:
                names = self._auto_names[len(fields)] = tuple(f"ch{i}" for i in range(len(fields)))
            return names, tuple(_number(f, n) for f, n in zip(fields, names, strict=True)), None
        row = dict(zip(columns, fields, strict=True))
        key = self.map.time_key
        t = _number(row[key], key) if key is not None else None
        names = self.map.channels or tuple(c for c in columns if c != key)
        return names, tuple(_number(row[n], n) for n in names), t


class LineDecoder:
    """Feed bytes, get one-sample batches per line; bad lines are counted, never raised.

    A port opened (or reopened) while the MCU prints joins its output mid-line, and the tail of
    a line can still parse (``0.6`` of ``0.51,0.6``...) into a wrong sample. So the bytes up to
    the first newline are dropped, counted as ``partial-line`` when they were not blank.
    ``at_line_start=True`` is for a stream known to begin at a line (a file, a recording).
    """

    def __init__(
        self,
        channel_map: ChannelMap | None = None,
        *,
        clock: Callable[[], float] = time.time,
        on_error: Callable[[MalformedLine], None] | None = None,
        at_line_start: bool = False,
    ) -> None:
        self.stats = DecoderStats()
        self.parser = LineParser(channel_map or ChannelMap(), clock)
        self._on_error = on_error
        self._buf = bytearray()
        self._overflow = False
        self._syncing = not at_line_start
        self._skipped = False  # non-blank bytes dropped while syncing
        self._count = 0

    @property
    def buffered(self) -> int:
        """Bytes held for the line in progress (never more than MAX_LINE_LENGTH)."""
        return len(self._buf)

    def reset(self) -> None:
        """Drop the line in progress and skip to the next newline (after a reconnect)."""
        self._buf.clear()
        self._overflow = False
        self._syncing = True
        self._skipped = False

    def feed(self, data: bytes) -> list[Message]:
        """Consume ``data``; return a batch for each complete, well-formed line."""
        self.stats.bytes_in += len(data)
        out: list[Message] = []
        start = 0
        if self._syncing:
            start = self._sync(data)
            if start < 0:
                return out
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                self._hold(data[start:])
                return out
            self._hold(data[start:end])
            start = end + 1
            raw = bytes(self._buf)
            self._buf.clear()
            if self._overflow:
                self._overflow = False
                self._fail(MalformedLine(f"line longer than {MAX_LINE_LENGTH} bytes dropped"))
            elif raw.strip():
                self._line(raw, out)

    def _sync(self, data: bytes) -> int:
        """Drop bytes up to the first newline; the offset after it, or -1 if none came yet."""
        end = data.find(b"\n")
        self._skipped = self._skipped or bool(data[: len(data) if end < 0 else end].strip())
        if end < 0:
            return -1
        self._syncing = False
        if self._skipped:
            self._skipped = False
            self._fail(PartialLine("the first line after opening the port was cut; dropped"))
        return end + 1

    def _hold(self, chunk: bytes) -> None:
        if self._overflow or not chunk:
            return
        if len(self._buf) + len(chunk) > MAX_LINE_LENGTH:
            self._overflow = True
            self._buf.clear()
        else:
            self._buf += chunk

    def _line(self, raw: bytes, out: list[Message]) -> None:
        try:
            batch = self.parser.parse(raw.decode("utf-8"))
        except UnicodeDecodeError:
            self._fail(MalformedLine("line is not UTF-8 (wrong baud rate?)"))
            return
        except MalformedLine as exc:
            self._fail(exc)
            return
        self.stats.messages += 1
        out.append(_with_seq(batch, self._count))
        self._count += 1

    def _fail(self, error: MalformedLine) -> None:
        self.stats.count_error(error)
        if self._on_error is not None:
            self._on_error(error)


def _with_seq(batch: SampleBatch, seq: int) -> SampleBatch:
    return SampleBatch(batch.t0, batch.period, batch.values, batch.channels, seq, batch.received_at)
