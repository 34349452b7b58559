"""The messages carried in serial frames, as frozen value objects with their payload layouts.

Every layout is little-endian, fixed-width, and documented byte by byte in
docs/serial-protocol.md; the C reference (firmware_bridge/firmware/efproto.h) mirrors it.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final

from edgefleet.firmware_bridge.errors import PayloadInvalid

MAX_PAYLOAD: Final = 512
MAX_RATE_HZ: Final = 10_000.0


class MsgType(IntEnum):
    """The message type byte of the frame header."""

    SAMPLES = 0x01
    STATUS = 0x02
    LOG = 0x03
    COMMAND = 0x04
    ACK = 0x05
    NACK = 0x06
    INFERENCE = 0x07


class CommandCode(IntEnum):
    """The first payload byte of a COMMAND frame."""

    SET_RATE = 0x01
    ACTUATOR = 0x02
    REBOOT = 0x03
    PING = 0x04


class NackCode(IntEnum):
    """Why a microcontroller refused a command."""

    BAD_ARGS = 0x01
    UNKNOWN_COMMAND = 0x02
    BUSY = 0x03
    MALFORMED = 0x04


STATUS_FLAG_BOOT: Final = 0x01

_SAMPLES_HEAD: Final = struct.Struct("<QIBB")
_STATUS: Final = struct.Struct("<IfIB")
_ACK: Final = struct.Struct("<HB")
_NACK: Final = struct.Struct("<HBB")
_INFERENCE: Final = struct.Struct("<QHf")
_F32: Final = struct.Struct("<f")
_ACTUATOR: Final = struct.Struct("<Bf")
# The largest batch whose payload fits MAX_PAYLOAD: 14 header bytes + 4 bytes per value.
MAX_BATCH_VALUES: Final = (MAX_PAYLOAD - _SAMPLES_HEAD.size) // 4
_floats_cache: dict[int, struct.Struct] = {}


def _floats(n: int) -> struct.Struct:
    # A bounded cache (n <= MAX_BATCH_VALUES) of compiled formats: decoding is the hot path.
    s = _floats_cache.get(n)
    if s is None:
        s = _floats_cache[n] = struct.Struct(f"<{n}f")
    return s


def _u(value: int, bits: int, name: str) -> None:
    if not 0 <= value < (1 << bits):
        raise ValueError(f"{name}={value} does not fit in {bits} unsigned bits")


@dataclass(frozen=True, slots=True)
class SampleBatch:
    """Consecutive samples of every channel: row ``i`` was taken at ``t0 + i * period`` (MCU s).

    ``channels``, ``seq`` and ``received_at`` (host ``time.time()``) are filled in by the link;
    they are not on the wire. Line mode sets ``t0`` from the line's time column or the host clock.
    """

    t0: float
    period: float
    values: tuple[tuple[float, ...], ...]
    channels: tuple[str, ...] = ()
    seq: int = 0
    received_at: float = 0.0

    def __post_init__(self) -> None:
        if not self.values:
            raise ValueError("a sample batch needs at least one sample")
        width = len(self.values[0])
        if width == 0 or any(len(row) != width for row in self.values):
            raise ValueError("every sample of a batch needs the same, non-zero number of values")
        if self.channels and len(self.channels) != width:
            raise ValueError(f"{len(self.channels)} channel names for {width} values per sample")
        if self.t0 < 0 or self.period < 0:
            raise ValueError("t0 and period must not be negative")

    @property
    def timestamps(self) -> tuple[float, ...]:
        """The MCU time of each sample, in seconds."""
        return tuple(self.t0 + i * self.period for i in range(len(self.values)))

    def to_numpy(self) -> Any:
        """The values as a float32 array of shape (samples, channels); needs numpy."""
        import numpy as np

        return np.asarray(self.values, dtype=np.float32)


@dataclass(frozen=True, slots=True)
class Status:
    """Heartbeat of the microcontroller."""

    uptime_ms: int
    sample_rate_hz: float
    tx_dropped: int = 0
    flags: int = 0

    def __post_init__(self) -> None:
        _u(self.uptime_ms, 32, "uptime_ms")
        _u(self.tx_dropped, 32, "tx_dropped")
        _u(self.flags, 8, "flags")

    @property
    def booted(self) -> bool:
        """True on the first status after a reset."""
        return bool(self.flags & STATUS_FLAG_BOOT)


@dataclass(frozen=True, slots=True)
class LogLine:
    """A log line printed by the firmware."""

    level: int
    text: str

    def __post_init__(self) -> None:
        _u(self.level, 8, "level")
        if len(self.text.encode()) > MAX_PAYLOAD - 1:
            raise ValueError(f"a log line holds at most {MAX_PAYLOAD - 1} UTF-8 bytes")


@dataclass(frozen=True, slots=True)
class SetSampleRate:
    """Command: sample at ``hz`` from now on."""

    hz: float

    def __post_init__(self) -> None:
        if not (0 < self.hz <= MAX_RATE_HZ):
            raise ValueError(f"sample rate must be in (0, {MAX_RATE_HZ}] Hz, not {self.hz}")


@dataclass(frozen=True, slots=True)
class SetActuator:
    """Command: drive actuator ``index`` (a relay, a PWM output) to ``value``."""

    index: int
    value: float

    def __post_init__(self) -> None:
        _u(self.index, 8, "index")
        if not math.isfinite(self.value):
            raise ValueError("an actuator value must be finite")


@dataclass(frozen=True, slots=True)
class Reboot:
    """Command: reset the microcontroller."""


@dataclass(frozen=True, slots=True)
class Ping:
    """Command: answer with an ACK and nothing else (link check)."""


Command = SetSampleRate | SetActuator | Reboot | Ping


@dataclass(frozen=True, slots=True)
class Ack:
    """The command sent in frame ``acked_seq`` was carried out."""

    acked_seq: int
    command: int

    def __post_init__(self) -> None:
        _u(self.acked_seq, 16, "acked_seq")
        _u(self.command, 8, "command")


@dataclass(frozen=True, slots=True)
class Nack:
    """The command sent in frame ``acked_seq`` was refused, for ``code`` (a NackCode)."""

    acked_seq: int
    command: int
    code: int

    def __post_init__(self) -> None:
        _u(self.acked_seq, 16, "acked_seq")
        _u(self.command, 8, "command")
        _u(self.code, 8, "code")


@dataclass(frozen=True, slots=True)
class InferenceResult:
    """A model result computed on the microcontroller (TFLite Micro)."""

    t: float
    label: int
    score: float

    def __post_init__(self) -> None:
        _u(self.label, 16, "label")


Message = SampleBatch | Status | LogLine | Command | Ack | Nack | InferenceResult


# ------------------------------------------------------------------ encoding


def _enc_samples(m: SampleBatch) -> bytes:
    rows, width = len(m.values), len(m.values[0])
    if rows > 255 or width > 255 or rows * width > MAX_BATCH_VALUES:
        raise ValueError(f"a batch holds at most {MAX_BATCH_VALUES} values in one frame")
    head = _SAMPLES_HEAD.pack(round(m.t0 * 1e6), round(m.period * 1e6), width, rows)
    flat = [v for row in m.values for v in row]
    return head + _floats(len(flat)).pack(*flat)


def _enc_command(m: Command) -> bytes:
    if isinstance(m, SetSampleRate):
        return bytes([CommandCode.SET_RATE]) + _F32.pack(m.hz)
    if isinstance(m, SetActuator):
        return bytes([CommandCode.ACTUATOR]) + _ACTUATOR.pack(m.index, m.value)
    if isinstance(m, Reboot):
        return bytes([CommandCode.REBOOT])
    return bytes([CommandCode.PING])


def _enc_status(m: Status) -> bytes:
    return _STATUS.pack(m.uptime_ms, m.sample_rate_hz, m.tx_dropped, m.flags)


def _enc_log(m: LogLine) -> bytes:
    return bytes([m.level]) + m.text.encode()


def _enc_ack(m: Ack) -> bytes:
    return _ACK.pack(m.acked_seq, m.command)


def _enc_nack(m: Nack) -> bytes:
    return _NACK.pack(m.acked_seq, m.command, m.code)


def _enc_inference(m: InferenceResult) -> bytes:
    return _INFERENCE.pack(round(m.t * 1e6), m.label, m.score)


_ENCODERS: Final[dict[type, tuple[MsgType, Callable[[Any], bytes]]]] = {
    SampleBatch: (MsgType.SAMPLES, _enc_samples),
    Status: (MsgType.STATUS, _enc_status),
    LogLine: (MsgType.LOG, _enc_log),
    SetSampleRate: (MsgType.COMMAND, _enc_command),
    SetActuator: (MsgType.COMMAND, _enc_command),
    Reboot: (MsgType.COMMAND, _enc_command),
    Ping: (MsgType.COMMAND, _enc_command),
    Ack: (MsgType.ACK, _enc_ack),
    Nack: (MsgType.NACK, _enc_nack),
    InferenceResult: (MsgType.INFERENCE, _enc_inference),
}


def encode_payload(message: Message) -> tuple[MsgType, bytes]:
    """The message type and payload bytes of ``message``."""
    msg_type, encode = _ENCODERS[type(message)]
    return msg_type, encode(message)


# ------------------------------------------------------------------ decoding


def _exact(payload: bytes, size: int, what: str) -> None:
    if len(payload) != size:
        raise PayloadInvalid(f"{what} payload is {len(payload)} bytes, expected {size}")


def _dec_samples(p: bytes) -> SampleBatch:
    if len(p) < _SAMPLES_HEAD.size:
        raise PayloadInvalid(f"samples payload is {len(p)} bytes, shorter than its header")
    t0_us, period_us, width, rows = _SAMPLES_HEAD.unpack_from(p)
    n = width * rows
    if n == 0:
        raise PayloadInvalid("a samples frame must carry at least one channel and one sample")
    _exact(p, _SAMPLES_HEAD.size + 4 * n, "samples")
    flat = _floats(n).unpack_from(p, _SAMPLES_HEAD.size)
    values = tuple(flat[i : i + width] for i in range(0, n, width))
    return SampleBatch(t0_us / 1e6, period_us / 1e6, values)


def _dec_status(p: bytes) -> Status:
    _exact(p, _STATUS.size, "status")
    return Status(*_STATUS.unpack(p))


def _dec_log(p: bytes) -> LogLine:
    if not p:
        raise PayloadInvalid("a log payload needs at least its level byte")
    # The CRC already vouched for the bytes: a firmware printing Latin-1 is not worth a drop.
    return LogLine(p[0], p[1:].decode("utf-8", errors="replace"))


def _dec_command(p: bytes) -> Command:
    # Each refusal names the NACK code the C firmware answers with (efproto.c ef_parse_command).
    if not p:
        raise PayloadInvalid("a command payload needs at least its command byte")
    code, args = p[0], p[1:]
    try:
        if code == CommandCode.SET_RATE:
            _command_args(code, args, _F32.size, "set-rate")
            return SetSampleRate(_F32.unpack(args)[0])
        if code == CommandCode.ACTUATOR:
            _command_args(code, args, _ACTUATOR.size, "actuator")
            return SetActuator(*_ACTUATOR.unpack(args))
        if code in (CommandCode.REBOOT, CommandCode.PING):
            _command_args(code, args, 0, "reboot/ping")
            return Reboot() if code == CommandCode.REBOOT else Ping()
    except ValueError as exc:  # the values' own checks; PayloadInvalid is no ValueError
        raise PayloadInvalid(
            f"command 0x{code:02x} has bad arguments: {exc}", command=code, nack=NackCode.BAD_ARGS
        ) from None
    raise PayloadInvalid(
        f"unknown command code 0x{code:02x}", command=code, nack=NackCode.UNKNOWN_COMMAND
    )


def _command_args(code: int, args: bytes, size: int, what: str) -> None:
    if len(args) != size:
        raise PayloadInvalid(
            f"{what} arguments are {len(args)} bytes, expected {size}",
            command=code,
            nack=NackCode.MALFORMED,
        )


def _dec_ack(p: bytes) -> Ack:
    _exact(p, _ACK.size, "ack")
    return Ack(*_ACK.unpack(p))


def _dec_nack(p: bytes) -> Nack:
    _exact(p, _NACK.size, "nack")
    return Nack(*_NACK.unpack(p))


def _dec_inference(p: bytes) -> InferenceResult:
    _exact(p, _INFERENCE.size, "inference")
    t_us, label, score = _INFERENCE.unpack(p)
    return InferenceResult(t_us / 1e6, label, score)


PAYLOAD_DECODERS: Final[dict[MsgType, Callable[[bytes], Message]]] = {
    MsgType.SAMPLES: _dec_samples,
    MsgType.STATUS: _dec_status,
    MsgType.LOG: _dec_log,
    MsgType.COMMAND: _dec_command,
    MsgType.ACK: _dec_ack,
    MsgType.NACK: _dec_nack,
    MsgType.INFERENCE: _dec_inference,
}


def decode_payload(msg_type: MsgType, payload: bytes) -> Message:
    """The message of type ``msg_type`` held in ``payload``; raises PayloadInvalid."""
    return PAYLOAD_DECODERS[msg_type](payload)


__all__ = [
    "MAX_BATCH_VALUES",
    "MAX_PAYLOAD",
    "Ack",
    "Command",
    "CommandCode",
    "InferenceResult",
    "LogLine",
    "Message",
    "MsgType",
    "Nack",
    "NackCode",
    "Ping",
    "Reboot",
    "SampleBatch",
    "SetActuator",
    "SetSampleRate",
    "Status",
    "decode_payload",
    "encode_payload",
]
