"""The incremental, bounded-memory decoder of COBS-framed serial frames."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Final

from edgefleet.firmware_bridge.base import DecoderStats
from edgefleet.firmware_bridge.errors import FrameError, FrameTooLong
from edgefleet.firmware_bridge.frames import MAX_ENCODED_LENGTH, SEQ_MODULO, Frame, decode_frame
from edgefleet.firmware_bridge.messages import Message, SampleBatch

_HALF: Final = SEQ_MODULO // 2


class SeqTracker:
    """Counts frames lost between received sequence numbers (16-bit, wrapping)."""

    def __init__(self, stats: DecoderStats) -> None:
        self._stats = stats
        self._last: int | None = None

    def see(self, seq: int) -> None:
        """Account for frame ``seq`` having arrived."""
        if self._stats.first_seq is None:
            self._stats.first_seq = seq
        self._stats.last_seq = seq
        if self._last is not None:
            gap = (seq - self._last - 1) % SEQ_MODULO
            # A jump forward by less than half the sequence space is loss; anything else is
            # the sender restarting (a reboot) or replaying, which is not loss.
            if gap < _HALF:
                self._stats.lost_frames += gap
            else:
                self._stats.seq_resets += 1
        self._last = seq

    def reset(self) -> None:
        """Forget the last sequence number (after a reconnect the sender may have rebooted)."""
        self._last = None


def default_channels(width: int) -> tuple[str, ...]:
    """Channel names used when none are configured: ``ch0``, ``ch1``, ..."""
    return tuple(f"ch{i}" for i in range(width))


class FrameDecoder:
    """Feed bytes, get messages: resynchronises at every 0x00, never buffers a frame too long.

    Bad frames are counted in ``stats.errors`` by reason and passed to ``on_error`` (if given);
    they are never returned. Sample batches come back with ``seq``, ``received_at`` and channel
    names (``channels`` when their count matches, else ``ch0``...) filled in.
    """

    def __init__(
        self,
        channels: Sequence[str] = (),
        *,
        clock: Callable[[], float] = time.time,
        on_error: Callable[[FrameError], None] | None = None,
    ) -> None:
        self.stats = DecoderStats()
        self._channels = tuple(channels)
        self._clock = clock
        self._on_error = on_error
        self._seq = SeqTracker(self.stats)
        self._buf = bytearray()
        self._overflow = False
        self._names: dict[int, tuple[str, ...]] = {}

    @property
    def buffered(self) -> int:
        """Bytes held for the frame in progress (never more than MAX_ENCODED_LENGTH)."""
        return len(self._buf)

    def reset(self) -> None:
        """Drop the frame in progress (after a reconnect).

        The last sequence number is kept: frames the MCU sent while the cable was out are
        counted as lost when the next one arrives; a rebooted MCU shows up as a reset.
        """
        self._buf.clear()
        self._overflow = False

    def feed(self, data: bytes) -> list[Message]:
        """Consume ``data``; return the messages of the frames it completed."""
        return [self._finish(frame) for frame in self.feed_frames(data)]

    def feed_frames(self, data: bytes) -> list[Frame]:
        """Consume ``data``; return the frames it completed (with their sequence numbers)."""
        self.stats.bytes_in += len(data)
        out: list[Frame] = []
        start = 0
        while True:
            end = data.find(0, start)
            if end < 0:
                self._hold(data[start:])
                return out
            if self._buf or self._overflow:
                self._hold(data[start:end])
                encoded = bytes(self._buf)
                self._buf.clear()
            else:
                encoded = data[start:end]
            start = end + 1
            if self._overflow:
                self._overflow = False
                self._fail(FrameTooLong(f"frame longer than {MAX_ENCODED_LENGTH} bytes dropped"))
            elif encoded:
                self._decode(encoded, out)

    def _hold(self, chunk: bytes) -> None:
        if self._overflow or not chunk:
            return
        if len(self._buf) + len(chunk) > MAX_ENCODED_LENGTH:
            # Memory stays bounded: drop everything up to the next delimiter.
            self._overflow = True
            self._buf.clear()
        else:
            self._buf += chunk

    def _decode(self, encoded: bytes, out: list[Frame]) -> None:
        try:
            frame = decode_frame(encoded)
        except FrameError as exc:
            self._fail(exc)
            return
        self._seq.see(frame.seq)
        self.stats.messages += 1
        out.append(frame)

    def _finish(self, frame: Frame) -> Message:
        msg = frame.message
        if not isinstance(msg, SampleBatch):
            return msg
        width = len(msg.values[0])
        names = self._names.get(width)
        if names is None:
            names = self._channels if len(self._channels) == width else default_channels(width)
            self._names[width] = names
        return replace(msg, channels=names, seq=frame.seq, received_at=self._clock())

    def _fail(self, error: FrameError) -> None:
        self.stats.count_error(error)
        if self._on_error is not None:
            self._on_error(error)
