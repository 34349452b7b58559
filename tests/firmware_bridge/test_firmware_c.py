"""The C reference (firmware_bridge/firmware) against the Python bridge: bytes, and over ptys."""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import select
import shutil
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.pty_tools import collect, raw_pty

from edgefleet.firmware_bridge.decoder import FrameDecoder
from edgefleet.firmware_bridge.emulator import EmulatorConfig, McuEmulator
from edgefleet.firmware_bridge.errors import FrameError
from edgefleet.firmware_bridge.frames import decode_frame, encode_frame, encode_raw, pack_frame
from edgefleet.firmware_bridge.link import SerialLink
from edgefleet.firmware_bridge.messages import (
    Ack,
    CommandCode,
    LogLine,
    MsgType,
    Nack,
    NackCode,
    Ping,
    Reboot,
    SampleBatch,
    SetActuator,
    SetSampleRate,
    Status,
    encode_payload,
)

ROOT = Path(__file__).resolve().parents[2]
FIRMWARE = ROOT / "firmware_bridge/firmware"
VECTORS = json.loads((FIRMWARE / "vectors.json").read_text())["vectors"]


@pytest.fixture(scope="session")
def ef_host(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The host build of the C reference, compiled with gcc for this test session."""
    if shutil.which("gcc") is None and shutil.which("cc") is None:
        pytest.fail("gcc is not installed: apt-get install -y gcc libc6-dev (make test does it)")
    build = tmp_path_factory.mktemp("ef_host")
    subprocess.run(
        ["make", "-s", "-C", str(FIRMWARE), f"BUILD={build}"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return build / "ef_host"


def test_c_selftest(ef_host: Path) -> None:
    out = subprocess.run(
        [ef_host, "selftest"], check=False, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "selftest ok"


def test_c_encodes_every_vector_byte_for_byte(ef_host: Path) -> None:
    out = subprocess.run(
        [ef_host, "vectors"], check=False, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0
    c_vectors = dict(line.split() for line in out.stdout.splitlines())
    assert c_vectors == {v["name"]: v["encoded"] for v in VECTORS}


def c_decode(ef_host: Path, chunks: list[bytes]) -> list[list[str]]:
    """Feed hex lines to the C decoder; per chunk, the events it printed."""
    text = "".join(chunk.hex() + "\n" for chunk in chunks)
    out = subprocess.run(
        [ef_host, "decode"], check=False, input=text, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0
    events: list[list[str]] = [[]]
    for line in out.stdout.splitlines():
        if line == "end":
            events.append([])
        else:
            events[-1].append(line)
    return events[:-1]


def py_events(chunks: list[bytes]) -> list[list[str]]:
    """The same events from the Python decoder, in the C program's format."""
    errors: list[FrameError] = []
    dec = FrameDecoder(on_error=errors.append)
    out = []
    for chunk in chunks:
        errors.clear()
        frames = dec.feed_frames(chunk)
        lines = [f"error {e.reason}" for e in errors]
        for f in frames:
            _, payload = encode_payload(f.message)
            lines.append(
                f"frame v={f.version} type={int(f.msg_type)} seq={f.seq} len={len(payload)} "
                f"payload={payload.hex()}"
            )
        out.append(sorted(lines))
    return out


def test_c_decodes_every_vector(ef_host: Path) -> None:
    chunks = [bytes.fromhex(v["encoded"]) for v in VECTORS]
    events = c_decode(ef_host, chunks)
    for vector, got in zip(VECTORS, events, strict=True):
        raw = bytes.fromhex(vector["raw"])
        assert got == [
            f"frame v=1 type={raw[1]} seq={vector['seq']} len={len(raw) - 10} "
            f"payload={raw[6:-4].hex()}"
        ]


def random_stream(rng: random.Random, n: int) -> bytes:
    out = bytearray()
    for seq in range(n):
        width = rng.randint(1, 4)
        values = tuple(
            tuple(float(rng.randint(-1000, 1000)) / 8 for _ in range(width))
            for _ in range(rng.randint(1, 20))
        )
        msg = rng.choice(
            [
                SampleBatch(rng.randint(0, 10**9) / 1e6, 0.001, values),
                Status(rng.randint(0, 2**32 - 1), 100.0, 3, 0),
                LogLine(1, "x" * rng.randint(0, 400)),
                SetSampleRate(125.0),
                Ack(seq, 1),
            ]
        )
        wire = bytearray(encode_frame(msg, seq))
        fault = rng.random()
        if fault < 0.15:  # flipped bit
            pos = rng.randrange(len(wire) * 8)
            wire[pos // 8] ^= 1 << (pos % 8)
        elif fault < 0.25:  # truncated
            wire = wire[: rng.randrange(len(wire))] + b"\x00"
        elif fault < 0.35:  # garbage before
            wire = bytearray(rng.randbytes(rng.randint(1, 40))) + wire
        elif fault < 0.40:  # an endless frame
            wire = bytearray(b"\x33" * 700) + b"\x00" + wire
        out += wire
    return bytes(out)


def test_c_and_python_decoders_agree_on_damaged_streams(ef_host: Path) -> None:
    rng = random.Random(11)
    stream = random_stream(rng, 400)
    cuts = sorted(rng.sample(range(1, len(stream)), 60))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    c_events = [sorted(e) for e in c_decode(ef_host, chunks)]
    py = py_events(chunks)
    assert c_events == py
    flat = [e for chunk in py for e in chunk]
    assert sum(e.startswith("frame") for e in flat) > 250
    assert sum(e.startswith("error") for e in flat) > 50


def test_c_refuses_forged_headers_like_python(ef_host: Path) -> None:
    forged = [
        encode_raw(pack_frame(MsgType.STATUS, 1, b"\x00" * 13, version=2)),
        encode_raw(pack_frame(0x7F, 2, b"x")),
    ]
    assert c_decode(ef_host, forged) == [["error bad-version"], ["error unknown-type"]]
    for wire in forged:
        with pytest.raises(FrameError):
            decode_frame(wire[:-1])


@pytest.fixture
def c_mcu(ef_host: Path) -> Iterator[tuple[int, str, list[subprocess.Popen[str]]]]:
    """A raw pty whose master the C program will drive; yields (master, slave path, procs)."""
    procs: list[subprocess.Popen[str]] = []
    with raw_pty() as (master, path):
        yield master, path, procs
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


def start_c(ef_host: Path, master: int, frames: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [ef_host, "mcu", str(master), str(frames)],
        pass_fds=(master,),
        stdout=subprocess.PIPE,
        text=True,
    )


def expected_batch(k: int) -> SampleBatch:
    values = tuple(tuple(float(k * 100 + s * 10 + c) for c in range(4)) for s in range(8))
    return SampleBatch(k * 80000 / 1e6, 0.01, values)  # the wire carries microseconds


def test_c_mcu_talks_to_the_serial_link_both_ways(ef_host: Path, c_mcu) -> None:
    master, path, procs = c_mcu

    async def main() -> None:
        async with SerialLink(path, ack_timeout=1.0) as link:
            procs.append(start_c(ef_host, master, 40))
            got = await collect(link, lambda r: sum(isinstance(x, SampleBatch) for x in r) >= 40)
            assert isinstance(got[0], Status)
            assert got[0].booted
            batches = [x for x in got if isinstance(x, SampleBatch)]
            for k, b in enumerate(batches):
                want = expected_batch(k)
                assert (b.seq, b.t0, b.period, b.values) == (k + 1, want.t0, 0.01, want.values)
            assert link.stats.decoder.error_total == 0
            assert link.stats.decoder.lost_frames == 0
            assert (await link.send_command(SetSampleRate(250))).command == CommandCode.SET_RATE
            await link.send_command(SetActuator(1, 0.5))
            await link.send_command(Ping())
            await link.send_command(Reboot())

    asyncio.run(asyncio.wait_for(main(), 60))
    out, _ = procs[0].communicate(timeout=10)
    assert procs[0].returncode == 0
    assert out.splitlines() == [
        "cmd set_rate 250.000",
        "cmd actuator 1 0.500",
        "cmd ping",
        "cmd reboot",
    ]


def read_frames(fd: int, count: int, timeout: float = 10.0) -> list[bytes]:
    """Read raw bytes from ``fd`` until ``count`` complete frames (with their 0x00) arrived."""
    buf = b""
    deadline = time.monotonic() + timeout
    while True:
        frames = [f + b"\x00" for f in buf.split(b"\x00")[:-1] if f]
        if len(frames) >= count:
            return frames
        left = deadline - time.monotonic()
        assert left > 0, f"only {len(frames)} of {count} frames arrived"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            buf += os.read(fd, 65536)


def test_c_frames_equal_python_encodings_and_c_nacks_and_dedupes(ef_host: Path, c_mcu) -> None:
    master, path, procs = c_mcu
    port = os.open(path, os.O_RDWR | os.O_NOCTTY)
    try:
        procs.append(start_c(ef_host, master, 30))
        frames = read_frames(port, 31)
        for wire in frames:  # what C put on the wire is what Python would have, byte for byte
            frame = decode_frame(wire[:-1])
            assert encode_frame(frame.message, frame.seq) == wire
        # An unknown command code: C must answer with a NACK for that frame's seq.
        os.write(port, encode_raw(pack_frame(MsgType.COMMAND, 7, b"\x09")))
        # The same command frame twice (a lost ack): the second is acked, not run again.
        twice = encode_frame(SetActuator(0, 1.0), 8)
        os.write(port, twice)
        os.write(port, twice)
        replies = [decode_frame(w[:-1]).message for w in read_frames(port, 3)]
        assert replies == [
            Nack(7, 0x09, NackCode.UNKNOWN_COMMAND),
            Ack(8, CommandCode.ACTUATOR),
            Ack(8, CommandCode.ACTUATOR),
        ]
        os.write(port, encode_frame(Reboot(), 9))
        out, _ = procs[0].communicate(timeout=10)
        assert out.splitlines() == [
            "nack seq=7 code=2",
            "cmd actuator 0 1.000",
            "dup seq=8",
            "cmd reboot",
        ]
    finally:
        os.close(port)


F32 = struct.Struct("<f")
# Command frames whose payload does not parse, each with the NACK the C firmware answers.
BAD_COMMANDS: list[tuple[bytes, Nack]] = [
    (bytes([CommandCode.ACTUATOR, 1]) + F32.pack(math.nan), Nack(20, 0x02, NackCode.BAD_ARGS)),
    (bytes([CommandCode.ACTUATOR, 0]) + F32.pack(-math.inf), Nack(21, 0x02, NackCode.BAD_ARGS)),
    (bytes([CommandCode.SET_RATE]) + F32.pack(math.nan), Nack(22, 0x01, NackCode.BAD_ARGS)),
    (bytes([CommandCode.SET_RATE]) + F32.pack(2e4), Nack(23, 0x01, NackCode.BAD_ARGS)),
    (bytes([CommandCode.SET_RATE, 1, 2]), Nack(24, 0x01, NackCode.MALFORMED)),
    (bytes([CommandCode.PING, 0]), Nack(25, 0x04, NackCode.MALFORMED)),
    (bytes([0x09]), Nack(26, 0x09, NackCode.UNKNOWN_COMMAND)),
    (b"", Nack(27, 0x00, NackCode.MALFORMED)),
]


def bad_command_frames() -> list[bytes]:
    frames = [encode_raw(pack_frame(MsgType.COMMAND, n.acked_seq, p)) for p, n in BAD_COMMANDS]
    return [*frames, frames[-1]]  # a resend of the last: answered again, not run again


def read_replies(fd: int, count: int, timeout: float = 10.0) -> list[Ack | Nack]:
    """The next ``count`` ACK/NACK messages from ``fd`` (sample and status frames skipped)."""
    dec = FrameDecoder()
    out: list[Ack | Nack] = []
    deadline = time.monotonic() + timeout
    while len(out) < count:
        left = deadline - time.monotonic()
        assert left > 0, f"only {out} of {count} replies arrived"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            out += [m for m in dec.feed(os.read(fd, 65536)) if isinstance(m, Ack | Nack)]
    return out


def test_c_and_the_emulator_nack_bad_commands_alike(ef_host: Path, c_mcu) -> None:
    master, path, procs = c_mcu
    want = [n for _p, n in BAD_COMMANDS] + [BAD_COMMANDS[-1][1]]
    port = os.open(path, os.O_RDWR | os.O_NOCTTY)
    try:
        procs.append(start_c(ef_host, master, 0))
        for wire in bad_command_frames():
            os.write(port, wire)
        assert read_replies(port, len(want)) == want
        os.write(port, encode_frame(Reboot(), 30))
        out, _ = procs[0].communicate(timeout=10)
        assert out.splitlines()[-1] == "cmd reboot"
        assert "dup seq=27" in out.splitlines()
    finally:
        os.close(port)

    async def emulated() -> list[Ack | Nack]:
        async with McuEmulator(EmulatorConfig(rate_hz=50, batch=5)) as mcu:
            fd = os.open(mcu.path, os.O_RDWR | os.O_NOCTTY)
            try:
                for wire in bad_command_frames():
                    os.write(fd, wire)
                replies = await asyncio.to_thread(read_replies, fd, len(want))
            finally:
                os.close(fd)
            assert mcu.stats.nacks == len(BAD_COMMANDS)
            assert mcu.stats.duplicate_commands == 1
            assert mcu.commands == []  # nothing was run
            return replies

    assert asyncio.run(asyncio.wait_for(emulated(), 30)) == want


def test_arduino_sketch_compiles_against_the_library(tmp_path: Path) -> None:
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ is not installed; the sketch is C++ (apt-get install -y g++)")
    sketch = FIRMWARE / "examples/edgefleet_sensor/edgefleet_sensor.ino"
    subprocess.run(
        [
            gxx,
            "-std=c++11",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-fsyntax-only",
            "-x",
            "c++",
            f"-I{FIRMWARE / 'host/arduino_stub'}",
            f"-I{FIRMWARE / 'efproto/src'}",
            str(sketch),
        ],
        check=True,
        timeout=60,
        cwd=tmp_path,
    )
