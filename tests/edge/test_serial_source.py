"""The agent's serial source over real pseudo-terminals, with the bridge's MCU emulator."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Coroutine
from typing import Any

import numpy as np
import pytest
from support.pty_tools import raw_pty, wait_until

from edgefleet.edge.errors import SourceError
from edgefleet.edge.sources.serial import SerialSource
from edgefleet.firmware_bridge import EmulatorConfig, McuEmulator, SampleBatch
from edgefleet.firmware_bridge.frames import decode_frame, encode_frame

CHANNELS = ("ax", "ay", "az")


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 60))


def sent_rows(mcu: McuEmulator) -> np.ndarray:
    """Every sample row the emulator put on the wire (before injected loss), in order."""
    rows: list[tuple[float, ...]] = []
    for frame in mcu.sent.values():
        msg = decode_frame(frame[:-1]).message
        assert isinstance(msg, SampleBatch)
        rows.extend(msg.values)
    return np.asarray(rows, dtype=np.float32)


def assert_subsequence(got: np.ndarray, sent: np.ndarray) -> None:
    """``got`` is ``sent`` with some rows left out, never with a row changed or reordered."""
    j = 0
    for row in got:
        while j < len(sent) and not np.array_equal(sent[j], row):
            j += 1
        assert j < len(sent), f"row {row} was never sent (or is out of order)"
        j += 1


def index_of(row: np.ndarray, sent: np.ndarray) -> int:
    hits = np.flatnonzero((sent == row).all(axis=1))
    assert len(hits) == 1, f"row {row} found {len(hits)} times"
    return int(hits[0])


async def read_samples(src: SerialSource, n: int) -> np.ndarray:
    chunks = []
    total = 0
    while total < n:
        chunk = await src.read()
        assert chunk is not None
        assert chunk.samples.dtype == np.float32
        assert chunk.samples.shape[1] == len(CHANNELS)
        chunks.append(chunk.samples)
        total += len(chunk.samples)
    return np.concatenate(chunks)


def test_serial_source_yields_the_emulators_samples_in_order() -> None:
    cfg = EmulatorConfig(rate_hz=1000, channels=3, batch=10, noise=0.05, seed=11)

    async def main() -> None:
        async with McuEmulator(cfg) as mcu:
            src = SerialSource(mcu.path, channels=CHANNELS, chunk=32, rate_hz=1000)
            try:
                got = await read_samples(src, 640)
                sent = sent_rows(mcu)
                # Contiguous: from the first row read on, exactly the rows the MCU sent.
                start = index_of(got[0], sent)
                assert np.array_equal(got, sent[start : start + len(got)])
                counters = src.counters()
                assert counters["lost_frames"] == 0
                assert counters["samples"] == src.chunks * 32 == counters["samples"]
                assert counters["connects"] == 1
            finally:
                await src.aclose()
            assert not src.link.connected

    run(main())


def test_chunks_are_timestamped_on_the_host_clock_one_sample_period_apart() -> None:
    cfg = EmulatorConfig(rate_hz=500, channels=3, batch=10, seed=2)

    async def main() -> None:
        async with McuEmulator(cfg) as mcu:
            src = SerialSource(mcu.path, channels=CHANNELS, chunk=25, rate_hz=500)
            try:
                first = await src.read()
                second = await src.read()
                assert first is not None
                assert second is not None
                assert second.t0 - first.t0 == pytest.approx(25 / 500, abs=1e-6)
                # Host wall-clock time (the MCU's clock starts at 0), a moment ago.
                assert 0 <= time.time() - first.t0 < 5.0
            finally:
                await src.aclose()

    run(main())


def test_unplug_and_replug_recovers_without_reopening_the_source() -> None:
    cfg = EmulatorConfig(rate_hz=1000, channels=3, batch=10, noise=0.05, seed=5)

    async def main() -> None:
        async with McuEmulator(cfg) as mcu:
            src = SerialSource(
                mcu.path, channels=CHANNELS, chunk=20, rate_hz=1000, read_timeout=0.2
            )
            events: list[tuple[str, str, str]] = []
            src.set_reporter(lambda kind, level, msg, data=None: events.append((kind, level, msg)))
            try:
                before = await read_samples(src, 200)
                mcu.unplug()
                assert not mcu.plugged
                # While the port is gone the source waits (short chunks, then nothing).
                await wait_until(lambda: not src.link.connected, 5, "the link to notice")
                mcu.plug()
                await wait_until(lambda: src.link.connected, 5, "the link to reopen")
                after = await read_samples(src, 200)
                sent = sent_rows(mcu)
                assert_subsequence(np.concatenate([before, after]), sent)
                # Rows after the replug are ones the MCU sent after it was plugged in again.
                assert index_of(after[-1], sent) > index_of(before[-1], sent)
                counters = src.counters()
                assert counters["connects"] == 2
                assert counters["disconnects"] == 1
                assert ("serial", "warning", f"serial port {mcu.path} lost") in events
                assert ("serial", "info", f"serial port {mcu.path} back") in events
            finally:
                await src.aclose()

    run(main())


def _frames(start: int, n: int) -> list[tuple[bytes, tuple[tuple[float, ...], ...]]]:
    out = []
    for seq in range(start, start + n):
        rows = tuple((seq + 0.25, -seq - 0.5, seq * 2.0 + 0.125) for _ in range(4))
        out.append((encode_frame(SampleBatch(seq * 0.04, 0.01, rows), seq), rows))
    return out


def test_a_garbage_burst_is_counted_and_no_corrupt_sample_comes_out() -> None:
    async def main() -> None:
        with raw_pty() as (master, path):
            src = SerialSource(
                path, channels=CHANNELS, chunk=8, rate_hz=100, read_timeout=0.5, report_interval=0
            )
            events: list[tuple[str, dict[str, Any]]] = []
            src.set_reporter(lambda kind, level, msg, data=None: events.append((msg, data or {})))
            try:
                frames = _frames(0, 20)
                wire = b"".join(f for f, _ in frames[:10])
                # A burst of line noise without a delimiter glues itself to frame 10 (lost to
                # its CRC), then a burst with delimiters in it makes two junk frames of its own.
                wire += bytes(range(1, 200)) + frames[10][0]
                wire += b"\x00\x07\x13\x00\xff\xfe\x00" + b"".join(f for f, _ in frames[11:])
                reading = asyncio.ensure_future(read_samples(src, 19 * 4))
                await wait_until(lambda: src.link.connected, 5, "the port to open")
                os.write(master, wire)
                got = await reading
            finally:
                await src.aclose()
            expected = [row for i, (_, rows) in enumerate(frames) if i != 10 for row in rows]
            assert np.array_equal(got, np.asarray(expected, dtype=np.float32))
            counters = src.counters()
            errors = {k: v for k, v in counters.items() if k.startswith("error.")}
            assert sum(errors.values()) == 3, errors
            assert counters["lost_frames"] == 1  # frame 10, taken down by the glued-on burst
            assert counters["messages"] == 19
            last = events[-1][1]
            assert last["lost_frames"] == 1
            assert sum(v for k, v in last.items() if k.startswith("error.")) == 3

    run(main())


def test_line_mode_reads_a_csv_sketch_and_skips_noise() -> None:
    async def main() -> None:
        with raw_pty() as (master, path):
            src = SerialSource(
                path,
                mode="line",
                fmt="csv",
                channels=("a", "b"),
                columns=("t_ms", "a", "b"),
                time_key="t_ms",
                time_scale=1e-3,
                chunk=3,
                rate_hz=100,
            )
            try:
                read = asyncio.ensure_future(src.read())
                await wait_until(lambda: src.link.connected, 5, "the port to open")
                # A sketch printing CSV, joined mid-line, with a reset banner in the middle.
                os.write(master, b"9,9\n0,1,2\nboot v1.2 ready\n10,3,4\n20,5,6\n30,7,8\n")
                chunk = await read
                assert chunk is not None
                assert chunk.samples.tolist() == [[1, 2], [3, 4], [5, 6]]
                assert src.counters()["error.bad-line"] == 1
                assert src.counters()["error.partial-line"] == 1
            finally:
                await src.aclose()

    run(main())


def test_line_mode_reads_the_emulators_json_lines_in_order() -> None:
    cfg = EmulatorConfig(rate_hz=400, channels=3, batch=5, mode="line", line_format="json")
    names = cfg.channel_names

    async def main() -> None:
        async with McuEmulator(cfg) as mcu:
            src = SerialSource(
                mcu.path,
                mode="line",
                fmt="json",
                channels=names,
                time_key="t_ms",
                time_scale=1e-3,
                chunk=10,
                rate_hz=400,
            )
            try:
                got = []
                for _ in range(6):
                    chunk = await src.read()
                    assert chunk is not None
                    got.append(chunk.samples)
                rows = np.concatenate(got)
                sent = np.asarray(
                    [[json.loads(line)[n] for n in names] for line in mcu.sent.values()],
                    dtype=np.float32,
                )
                start = index_of(rows[0], sent)
                assert np.array_equal(rows, sent[start : start + len(rows)])
            finally:
                await src.aclose()

    run(main())


def test_a_batch_of_the_wrong_width_is_dropped_and_counted() -> None:
    async def main() -> None:
        with raw_pty() as (master, path):
            src = SerialSource(path, channels=CHANNELS, chunk=4, rate_hz=100, read_timeout=0.5)
            try:
                read = asyncio.ensure_future(src.read())
                await wait_until(lambda: src.link.connected, 5, "the port to open")
                two = SampleBatch(0.0, 0.01, ((9.0, 9.0),) * 4)
                three = SampleBatch(0.04, 0.01, ((1.0, 2.0, 3.0),) * 4)
                os.write(master, encode_frame(two, 0) + encode_frame(three, 1))
                chunk = await read
                assert chunk is not None
                assert chunk.samples.tolist() == [[1.0, 2.0, 3.0]] * 4
                assert src.counters()["wrong_width"] == 1
            finally:
                await src.aclose()

    run(main())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"channels": ()}, r"source\.channels"),
        ({"channels": ("a",), "mode": "binary"}, "framed"),
        ({"channels": ("a", "b"), "mode": "line", "columns": ("t", "a")}, "not among"),
        ({"channels": ("a",), "mode": "line", "time_key": "t", "columns": ("a",)}, "time_key"),
    ],
)
def test_bad_serial_settings_are_source_errors(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(SourceError, match=match):
        SerialSource("/dev/null-not-a-port", **kwargs)


def test_a_port_that_never_appears_is_a_source_error_after_open_timeout(tmp_path: Any) -> None:
    async def main() -> None:
        src = SerialSource(str(tmp_path / "tty"), channels=CHANNELS, open_timeout=0.3)
        with pytest.raises(SourceError, match="not there"):
            await src.read()
        await src.aclose()

    run(main())


def test_the_source_waits_for_a_port_that_appears_later(tmp_path: Any) -> None:
    cfg = EmulatorConfig(rate_hz=400, channels=3, batch=10, seed=9)

    async def main() -> None:
        link = tmp_path / "tty"
        events: list[str] = []
        src = SerialSource(str(link), channels=CHANNELS, chunk=10, reconnect_min=0.05)
        src.set_reporter(lambda kind, level, msg, data=None: events.append(msg))
        read = asyncio.ensure_future(src.read())
        await wait_until(lambda: bool(events), 5, "the waiting event")
        assert not read.done()
        async with McuEmulator(cfg, path=link):
            chunk = await asyncio.wait_for(read, 10)
            assert chunk is not None
            assert chunk.samples.shape == (10, 3)
            await src.aclose()
        assert events[0] == f"waiting for serial port {link}"

    run(main())
