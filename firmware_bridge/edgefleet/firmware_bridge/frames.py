"""The serial frame, version 1: header, payload and CRC-32, COBS-encoded, ended by 0x00.

Unencoded frame (docs/serial-protocol.md has the diagram and test vectors)::

    version u8 | type u8 | seq u16 LE | length u16 LE | payload (length bytes) | crc32 u32 LE

The CRC is CRC-32/ISO-HDLC (zlib's ``crc32``: polynomial 0x04C11DB7 reflected, init and
xor-out 0xFFFFFFFF, check value 0xCBF43926 for ``b"123456789"``) over the header and payload.
COBS (Cheshire & Baker, 1999) removes every 0x00 from the frame so that 0x00 only ever
delimits frames: a receiver that starts mid-stream or sees garbage resynchronises at the next
0x00. The ``cobs`` package's C extension does the byte stuffing.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Final

from cobs import cobs

from edgefleet.firmware_bridge.errors import (
    CobsError,
    CrcMismatch,
    FrameTooLong,
    LengthMismatch,
    PayloadInvalid,
    TruncatedFrame,
    UnknownMessageType,
    UnsupportedVersion,
)
from edgefleet.firmware_bridge.messages import (
    MAX_PAYLOAD,
    Message,
    MsgType,
    decode_payload,
    encode_payload,
)

PROTOCOL_VERSION: Final = 1
DELIMITER: Final = b"\x00"
HEADER: Final = struct.Struct("<BBHH")
CRC: Final = struct.Struct("<I")
HEADER_SIZE: Final = HEADER.size
CRC_SIZE: Final = CRC.size
MAX_FRAME_LENGTH: Final = HEADER_SIZE + MAX_PAYLOAD + CRC_SIZE
# COBS adds one code byte per started run of 254 bytes.
MAX_ENCODED_LENGTH: Final = MAX_FRAME_LENGTH + (MAX_FRAME_LENGTH + 253) // 254
SEQ_MODULO: Final = 1 << 16
_KNOWN_TYPES: Final = frozenset(int(t) for t in MsgType)


def crc32(data: bytes) -> int:
    """CRC-32/ISO-HDLC of ``data`` (zlib's), the frame checksum."""
    return zlib.crc32(data) & 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame: its sequence number, type and message."""

    seq: int
    msg_type: MsgType
    message: Message
    version: int = PROTOCOL_VERSION


def pack_frame(msg_type: int, seq: int, payload: bytes, version: int = PROTOCOL_VERSION) -> bytes:
    """The unencoded frame (header, payload, CRC) for raw parts; tests use it to forge frames."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds MAX_PAYLOAD={MAX_PAYLOAD}")
    body = HEADER.pack(version, msg_type, seq % SEQ_MODULO, len(payload)) + payload
    return body + CRC.pack(crc32(body))


def encode_raw(raw: bytes) -> bytes:
    """COBS-encode an unencoded frame and append the 0x00 delimiter."""
    return bytes(cobs.encode(raw)) + DELIMITER


def encode_frame(message: Message, seq: int) -> bytes:
    """The bytes to write to the wire for ``message`` sent as frame number ``seq``."""
    msg_type, payload = encode_payload(message)
    return encode_raw(pack_frame(msg_type, seq, payload))


def unpack_frame(raw: bytes) -> Frame:
    """Check and decode an unencoded frame; raises a FrameError subclass."""
    if len(raw) > MAX_FRAME_LENGTH:
        raise FrameTooLong(f"frame of {len(raw)} bytes exceeds {MAX_FRAME_LENGTH}")
    if len(raw) < HEADER_SIZE + CRC_SIZE:
        raise TruncatedFrame(f"frame of {len(raw)} bytes is shorter than header and CRC")
    body = raw[:-CRC_SIZE]
    (expected,) = CRC.unpack_from(raw, len(body))
    if crc32(body) != expected:
        raise CrcMismatch(f"CRC 0x{crc32(body):08x} != 0x{expected:08x} in the frame")
    version, type_byte, seq, length = HEADER.unpack_from(body)
    if version != PROTOCOL_VERSION:
        raise UnsupportedVersion(
            f"frame speaks protocol version {version}; this bridge speaks {PROTOCOL_VERSION}: "
            "flash matching firmware"
        )
    if length != len(body) - HEADER_SIZE:
        raise LengthMismatch(f"header says {length} payload bytes, frame has {len(body) - 6}")
    if type_byte not in _KNOWN_TYPES:
        raise UnknownMessageType(f"unknown message type 0x{type_byte:02x}")
    msg_type = MsgType(type_byte)
    try:
        message = decode_payload(msg_type, body[HEADER_SIZE:])
    except PayloadInvalid as exc:
        # The CRC vouched for the header: a receiver can still answer this frame (a NACK).
        exc.seq, exc.msg_type = seq, msg_type
        raise
    return Frame(seq, msg_type, message, version)


def decode_frame(encoded: bytes) -> Frame:
    """Decode the COBS bytes of one frame (without its 0x00); raises a FrameError subclass."""
    if len(encoded) > MAX_ENCODED_LENGTH:
        raise FrameTooLong(f"encoded frame of {len(encoded)} bytes exceeds {MAX_ENCODED_LENGTH}")
    try:
        raw = cobs.decode(encoded)
    except cobs.DecodeError as exc:
        raise CobsError(f"invalid COBS encoding: {exc}") from None
    return unpack_frame(bytes(raw))
