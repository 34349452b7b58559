"""The frame codec: shared test vectors, typed errors for bad input, Hypothesis round trips."""

from __future__ import annotations

import json
import math
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
from cobs import cobs
from hypothesis import given
from hypothesis import strategies as st

from edgefleet.firmware_bridge import errors as err
from edgefleet.firmware_bridge.frames import (
    CRC,
    HEADER,
    MAX_ENCODED_LENGTH,
    MAX_FRAME_LENGTH,
    PROTOCOL_VERSION,
    crc32,
    decode_frame,
    encode_frame,
    encode_raw,
    pack_frame,
)
from edgefleet.firmware_bridge.messages import (
    MAX_BATCH_VALUES,
    MAX_PAYLOAD,
    Ack,
    CommandCode,
    InferenceResult,
    LogLine,
    Message,
    MsgType,
    Nack,
    Ping,
    Reboot,
    SampleBatch,
    SetActuator,
    SetSampleRate,
    Status,
)
from edgefleet.protocol.errors import EdgefleetError, ProtocolError

ROOT = Path(__file__).resolve().parents[2]
VECTORS = json.loads((ROOT / "firmware_bridge/firmware/vectors.json").read_text())["vectors"]
KINDS: dict[str, Any] = {
    "samples": SampleBatch,
    "status": Status,
    "log": LogLine,
    "set_rate": SetSampleRate,
    "actuator": SetActuator,
    "reboot": Reboot,
    "ping": Ping,
    "ack": Ack,
    "nack": Nack,
    "inference": InferenceResult,
}


def vector_message(v: dict[str, Any]) -> Message:
    """The message a test vector describes, built from its fields."""
    fields = dict(v["fields"])
    if v["message"] == "samples":
        fields["values"] = tuple(tuple(row) for row in fields["values"])
    return KINDS[v["message"]](**fields)  # type: ignore[no-any-return]


def test_crc_is_crc32_iso_hdlc_with_its_check_value() -> None:
    assert crc32(b"123456789") == 0xCBF43926
    assert crc32(b"123456789") == zlib.crc32(b"123456789")


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector_encodes_byte_for_byte(vector: dict[str, Any]) -> None:
    wire = encode_frame(vector_message(vector), vector["seq"])
    assert wire.hex() == vector["encoded"]
    assert cobs.decode(wire[:-1]).hex() == vector["raw"]
    assert wire.count(0) == 1
    assert wire.endswith(b"\x00")


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector_decodes_to_its_fields(vector: dict[str, Any]) -> None:
    frame = decode_frame(bytes.fromhex(vector["encoded"])[:-1])
    assert frame.seq == vector["seq"]
    assert frame.version == PROTOCOL_VERSION
    assert frame.message == vector_message(vector)


def test_vectors_are_documented() -> None:
    doc = "".join((ROOT / "docs/serial-protocol.md").read_text().split())
    for vector in VECTORS:
        assert vector["encoded"] in doc, f"vector {vector['name']} missing from the docs"


def _forge(version: int = 1, msg_type: int = 2, seq: int = 0, payload: bytes = b"", length=None):
    body = HEADER.pack(version, msg_type, seq, len(payload) if length is None else length)
    body += payload
    return cobs.encode(body + CRC.pack(zlib.crc32(body)))


STATUS_PAYLOAD = struct.pack("<IfIB", 1, 100.0, 0, 0)
BAD_FRAMES = [
    pytest.param(b"\x05\x01", err.CobsError, id="cobs"),
    pytest.param(cobs.encode(b"\x01\x02\x03"), err.TruncatedFrame, id="truncated"),
    pytest.param(b"\x01" * (MAX_ENCODED_LENGTH + 1), err.FrameTooLong, id="too-long"),
    pytest.param(_forge(payload=STATUS_PAYLOAD)[:-1] + b"\x99", err.CrcMismatch, id="crc"),
    pytest.param(_forge(version=2, payload=STATUS_PAYLOAD), err.UnsupportedVersion, id="version"),
    pytest.param(_forge(payload=STATUS_PAYLOAD, length=3), err.LengthMismatch, id="length"),
    pytest.param(_forge(msg_type=0x7F, payload=b"x"), err.UnknownMessageType, id="type"),
    pytest.param(_forge(payload=STATUS_PAYLOAD[:-1]), err.PayloadInvalid, id="status-size"),
    pytest.param(_forge(msg_type=1, payload=b"\x00" * 14), err.PayloadInvalid, id="empty-batch"),
    pytest.param(_forge(msg_type=1, payload=b"\x00" * 13), err.PayloadInvalid, id="short-batch"),
    pytest.param(
        _forge(msg_type=1, payload=struct.pack("<QIBB", 0, 0, 2, 2) + b"\x00" * 12),
        err.PayloadInvalid,
        id="batch-size",
    ),
    pytest.param(_forge(msg_type=3), err.PayloadInvalid, id="empty-log"),
    pytest.param(_forge(msg_type=4), err.PayloadInvalid, id="empty-command"),
    pytest.param(_forge(msg_type=4, payload=b"\x09"), err.PayloadInvalid, id="unknown-command"),
    pytest.param(
        _forge(msg_type=4, payload=b"\x01" + struct.pack("<f", math.nan)),
        err.PayloadInvalid,
        id="nan-rate",
    ),
    pytest.param(_forge(msg_type=4, payload=b"\x03\x00"), err.PayloadInvalid, id="reboot-args"),
    pytest.param(_forge(msg_type=5, payload=b"\x00"), err.PayloadInvalid, id="ack-size"),
    pytest.param(_forge(msg_type=6, payload=b"\x00"), err.PayloadInvalid, id="nack-size"),
    pytest.param(_forge(msg_type=7, payload=b"\x00"), err.PayloadInvalid, id="inference-size"),
]


@pytest.mark.parametrize(("encoded", "error"), BAD_FRAMES)
def test_bad_frames_raise_typed_errors(encoded: bytes, error: type[err.FrameError]) -> None:
    with pytest.raises(error) as info:
        decode_frame(encoded)
    assert isinstance(info.value, EdgefleetError)
    assert isinstance(info.value, ProtocolError)
    assert info.value.reason == error.reason != "bad-frame"


def test_unpacked_frame_longer_than_the_maximum_is_refused() -> None:
    with pytest.raises(err.FrameTooLong):
        decode_frame(cobs.encode(b"\x01" * (MAX_FRAME_LENGTH + 1)))


def test_payload_larger_than_the_maximum_cannot_be_packed() -> None:
    with pytest.raises(ValueError, match="MAX_PAYLOAD"):
        pack_frame(MsgType.LOG, 0, b"x" * (MAX_PAYLOAD + 1))


def test_largest_payload_fits_the_encoded_maximum() -> None:
    wire = encode_raw(pack_frame(MsgType.LOG, 0, b"\x01" * MAX_PAYLOAD))
    assert len(wire) - 1 <= MAX_ENCODED_LENGTH
    assert decode_frame(wire[:-1]).message == LogLine(1, "\x01" * (MAX_PAYLOAD - 1))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: SampleBatch(0, 0, ()), "at least one"),
        (lambda: SampleBatch(0, 0, ((1.0,), (1.0, 2.0))), "same"),
        (lambda: SampleBatch(0, 0, ((1.0,),), channels=("a", "b")), "channel names"),
        (lambda: SampleBatch(-1, 0, ((1.0,),)), "negative"),
        (lambda: Status(-1, 1.0), "uptime_ms"),
        (lambda: SetSampleRate(0), "sample rate"),
        (lambda: SetSampleRate(math.nan), "sample rate"),
        (lambda: SetActuator(256, 1.0), "index"),
        (lambda: SetActuator(0, math.inf), "finite"),
        (lambda: Ack(70000, 1), "acked_seq"),
        (lambda: Nack(0, 1, 300), "code"),
        (lambda: LogLine(0, "x" * MAX_PAYLOAD), "UTF-8 bytes"),
        (lambda: InferenceResult(0, -1, 0.5), "label"),
    ],
)
def test_messages_validate_on_construction(make: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_batch_too_large_for_one_frame_is_refused() -> None:
    batch = SampleBatch(0, 0, tuple((1.0,) for _ in range(MAX_BATCH_VALUES + 1)))
    with pytest.raises(ValueError, match="at most"):
        encode_frame(batch, 0)


def test_invalid_utf8_in_a_log_line_is_replaced_not_dropped() -> None:
    frame = decode_frame(cobs.encode(pack_frame(MsgType.LOG, 1, b"\x02ok\xff")))
    assert frame.message == LogLine(2, "ok\ufffd")


def test_sample_batch_helpers() -> None:
    batch = SampleBatch(1.0, 0.5, ((1.0, 2.0), (3.0, 4.0)), channels=("a", "b"))
    assert batch.timestamps == (1.0, 1.5)
    array = batch.to_numpy()
    assert array.shape == (2, 2)
    assert array.dtype.name == "float32"


# ------------------------------------------------------------------ Hypothesis round trips

f32 = st.floats(width=32, allow_nan=False)
# Actuator values are refused unless finite (tested above); samples may carry infinities.
finite32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
u8, u16, u32 = (st.integers(0, 2**b - 1) for b in (8, 16, 32))
micros = st.integers(0, 2**40).map(lambda us: us / 1e6)


@st.composite
def batches(draw: st.DrawFn) -> SampleBatch:
    width = draw(st.integers(1, 8))
    rows = draw(st.integers(1, MAX_BATCH_VALUES // width))
    values = tuple(tuple(draw(f32) for _ in range(width)) for _ in range(rows))
    period = draw(st.integers(0, 2**32 - 1)) / 1e6
    return SampleBatch(draw(micros), period, values)


messages = st.one_of(
    batches(),
    st.builds(Status, u32, f32, u32, u8),
    st.builds(LogLine, u8, st.text(max_size=100)),
    st.builds(SetSampleRate, st.floats(0.5, 10_000, width=32)),
    st.builds(SetActuator, u8, finite32),
    st.just(Reboot()),
    st.just(Ping()),
    st.builds(Ack, u16, st.sampled_from(list(CommandCode))),
    st.builds(Nack, u16, u8, u8),
    st.builds(InferenceResult, micros, u16, f32),
)


@given(messages, u16)
def test_every_message_round_trips(message: Message, seq: int) -> None:
    wire = encode_frame(message, seq)
    assert wire.index(0) == len(wire) - 1  # the only zero is the delimiter
    frame = decode_frame(wire[:-1])
    assert frame.seq == seq
    assert frame.message == message


@given(messages, u16, st.data())
def test_any_flipped_bit_is_rejected(message: Message, seq: int, data: st.DataObject) -> None:
    wire = bytearray(encode_frame(message, seq)[:-1])
    bit = data.draw(st.integers(0, len(wire) * 8 - 1))
    wire[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(err.FrameError):
        decode_frame(bytes(wire))
