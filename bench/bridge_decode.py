"""Serial bridge decode speed vs. the raw pyserial read rate of the same bytes over a pty.

Target (issue 5): the bridge never limits a 1 Mbaud link, i.e. decode_mb_per_s >= 0.125. Also
measured: the worst case of tiny frames (one channel, one sample: per-frame cost dominates,
``small_*``) and the whole ``SerialLink`` path (pty read on the event loop, decode, queue,
``receive()``: ``link_mb_per_s``).
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
import time
import tty

import serial
from _common import emit

from edgefleet.firmware_bridge.decoder import FrameDecoder
from edgefleet.firmware_bridge.frames import encode_frame
from edgefleet.firmware_bridge.link import SerialLink
from edgefleet.firmware_bridge.messages import SampleBatch

FRAMES = 20_000
CHANNELS, BATCH = 3, 10  # a typical IMU batch: 3 axes, 10 samples per frame
SMALL_CHANNELS, SMALL_BATCH = 1, 1  # the worst case: every sample its own frame
CHUNK = 4096
TARGET_MB_PER_S = 0.125
REPEATS = 3


def make_stream(channels: int = CHANNELS, batch: int = BATCH) -> bytes:
    """FRAMES sample frames of ``batch`` rows of ``channels`` values, as the MCU would send them."""
    out = bytearray()
    for seq in range(FRAMES):
        values = tuple(
            tuple(math.sin(seq + 0.1 * s + c) for c in range(channels)) for s in range(batch)
        )
        out += encode_frame(SampleBatch(seq * 0.01, 0.001, values), seq % 65536)
    return bytes(out)


def decode_rate(data: bytes) -> tuple[float, float]:
    """Best-of-REPEATS (frames/s, MB/s) of FrameDecoder on in-memory chunks."""
    best = math.inf
    for _ in range(REPEATS):
        dec = FrameDecoder(("x", "y", "z"))
        start = time.perf_counter()
        n = 0
        for i in range(0, len(data), CHUNK):
            n += len(dec.feed(data[i : i + CHUNK]))
        elapsed = time.perf_counter() - start
        assert n == FRAMES
        assert dec.stats.error_total == 0
        best = min(best, elapsed)
    return FRAMES / best, len(data) / best / 1e6


def _write_all(master: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(master, view[:CHUNK]) :]


async def _link_rate(data: bytes) -> float:
    master, slave = os.openpty()
    tty.setraw(slave)
    link = SerialLink(
        os.ttyname(slave), 1_000_000, channels=("x", "y", "z"), queue_size=FRAMES + 16
    )
    try:
        async with link:
            thread = threading.Thread(target=_write_all, args=(master, data), daemon=True)
            start = time.perf_counter()
            thread.start()
            n = 0
            while n < FRAMES:
                n += isinstance(await link.receive(10.0), SampleBatch)
            elapsed = time.perf_counter() - start
            thread.join(5)
    finally:
        os.close(master)
        os.close(slave)
    assert link.stats.decoder.error_total == 0
    assert link.stats.queue_drops == 0
    return len(data) / elapsed / 1e6


def link_rate(data: bytes) -> float:
    """MB/s of ``data`` through a real SerialLink on a pty, up to the consumer's receive()."""
    return asyncio.run(_link_rate(data))


def pty_rate(data: bytes, decode: bool) -> float:
    """MB/s of reading ``data`` through a pty with pyserial (and decoding it if asked)."""
    master, slave = os.openpty()
    tty.setraw(slave)
    port = serial.Serial(os.ttyname(slave), 1_000_000, timeout=1)

    def writer() -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(master, view[:CHUNK]) :]

    dec = FrameDecoder(("x", "y", "z"))
    got = 0
    thread = threading.Thread(target=writer, daemon=True)
    start = time.perf_counter()
    thread.start()
    while got < len(data):
        chunk = port.read(max(1, min(port.in_waiting, 65536)))
        if not chunk:
            break
        got += len(chunk)
        if decode:
            dec.feed(chunk)
    elapsed = time.perf_counter() - start
    thread.join(5)
    port.close()
    os.close(master)
    os.close(slave)
    assert got == len(data), f"read {got} of {len(data)} bytes"
    if decode:
        assert dec.stats.messages == FRAMES
    return got / elapsed / 1e6


def main() -> None:
    """Run the benchmark and print the JSON result line."""
    data = make_stream()
    frames_per_s, decode_mb_per_s = decode_rate(data)
    small = make_stream(SMALL_CHANNELS, SMALL_BATCH)
    small_frames_per_s, small_mb_per_s = decode_rate(small)
    raw = max(pty_rate(data, decode=False) for _ in range(REPEATS))
    both = max(pty_rate(data, decode=True) for _ in range(REPEATS))
    link = max(link_rate(data) for _ in range(REPEATS))
    print(
        f"{FRAMES} frames, {len(data) / 1e6:.2f} MB: decode {decode_mb_per_s:.1f} MB/s "
        f"({frames_per_s:,.0f} frames/s); pty raw read {raw:.1f} MB/s, read+decode {both:.1f} MB/s"
        f", SerialLink {link:.1f} MB/s; 1x1 frames of {len(small) // FRAMES} B: decode "
        f"{small_mb_per_s:.2f} MB/s ({small_frames_per_s:,.0f} frames/s)"
    )
    emit(
        "bridge_decode",
        {
            "frames_per_s": round(frames_per_s),
            "decode_mb_per_s": round(decode_mb_per_s, 3),
            "raw_read_mb_per_s": round(raw, 3),
            "pty_read_decode_mb_per_s": round(both, 3),
            "link_mb_per_s": round(link, 3),
            "decode_vs_raw_read": round(decode_mb_per_s / raw, 3),
            "target_decode_mb_per_s": TARGET_MB_PER_S,
            "meets_target": decode_mb_per_s >= TARGET_MB_PER_S,
            "frame_bytes": len(data) // FRAMES,
            "small_frames_per_s": round(small_frames_per_s),
            "small_decode_mb_per_s": round(small_mb_per_s, 3),
            "small_frame_bytes": len(small) // FRAMES,
            "small_meets_target": small_mb_per_s >= TARGET_MB_PER_S,
            "link_meets_target": link >= TARGET_MB_PER_S,
        },
        ("pyserial", "cobs"),
    )


if __name__ == "__main__":
    main()
