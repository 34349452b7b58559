"""Seams of the bridge: bytes to messages (ByteDecoder and counters), samples to an emulated MCU."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from edgefleet.firmware_bridge.errors import BridgeError
from edgefleet.firmware_bridge.messages import Message


@dataclass(slots=True)
class DecoderStats:
    """Counters of one decoder; errors are keyed by the error's stable ``reason``."""

    bytes_in: int = 0
    messages: int = 0
    lost_frames: int = 0
    seq_resets: int = 0
    # Sequence numbers of the first and latest frame decoded (framed mode only): with no
    # resets, messages + lost_frames == last_seq - first_seq + 1 (mod 2**16).
    first_seq: int | None = None
    last_seq: int | None = None
    errors: Counter[str] = field(default_factory=Counter)

    def count_error(self, error: BridgeError) -> None:
        """Count one dropped frame or line under its reason."""
        self.errors[error.reason] += 1

    @property
    def error_total(self) -> int:
        """All frames or lines dropped for any reason."""
        return sum(self.errors.values())

    def snapshot(self) -> dict[str, int]:
        """A flat copy of every counter (errors as ``error.<reason>``), for logs and metrics."""
        out = {
            "bytes_in": self.bytes_in,
            "messages": self.messages,
            "lost_frames": self.lost_frames,
            "seq_resets": self.seq_resets,
        }
        out.update({f"error.{k}": v for k, v in sorted(self.errors.items())})
        return out


class ByteDecoder(Protocol):
    """Turns chunks of serial bytes into messages; never raises on bad input, counts it instead."""

    stats: DecoderStats

    def feed(self, data: bytes) -> list[Message]:
        """Consume ``data`` and return the messages completed by it, in order."""
        ...

    def reset(self) -> None:
        """Forget any partial frame or line (after a reconnect); counters are kept."""
        ...


class SampleSource(Protocol):
    """Where an emulated MCU's samples come from (instead of its built-in sines plus noise).

    ``read(n)`` returns the next ``n`` rows of one value per channel. The emulator asks for a
    batch at a time, at its sample rate, on the event loop's thread: keep it quick. A seeded
    signal generator with drift (the simulator's) or a recording can stand behind it.
    """

    def read(self, n: int) -> Sequence[Sequence[float]]:
        """The next ``n`` samples, ``n`` rows of ``channels`` floats."""
        ...
