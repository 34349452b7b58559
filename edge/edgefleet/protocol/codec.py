"""Encode and decode edgefleet messages: JSON (the default) and a compact binary codec.

JSON is the default because any MQTT client (mosquitto_sub, Node-RED, Grafana's MQTT source)
can read it. The binary codec is MessagePack behind a two-byte header (magic ``0xEF`` and the
codec version), so a decoder tells the two apart from the first byte: JSON objects start with
``{`` and MessagePack payloads here always start with ``0xEF``. Decoding anything else raises
:class:`~edgefleet.protocol.errors.DecodeError` (or a subclass), never another exception.
"""

from __future__ import annotations

import math
from typing import Any, Final, Protocol

import msgspec

from edgefleet.protocol.errors import (
    DecodeError,
    InvalidMessage,
    PayloadTooLarge,
    TopicError,
    UnknownSchema,
)
from edgefleet.protocol.messages import (
    COMMANDS,
    SCHEMAS,
    STREAMS,
    CommandAck,
    Envelope,
    Event,
    Message,
    ReadingBatch,
    Status,
)
from edgefleet.protocol.topics import Kind, Topic

Payload = bytes | bytearray | memoryview

# MQTT allows 256 MB per packet; a device message never needs more than a full batch.
MAX_PAYLOAD_BYTES: Final = 256 * 1024
BINARY_MAGIC: Final = 0xEF
BINARY_VERSION: Final = 1
_BINARY_HEADER: Final = bytes([BINARY_MAGIC, BINARY_VERSION])
# MessagePack can carry NaN and the infinities, JSON cannot (msgspec writes them as null). The
# binary decoder reads them as JSON does, as None: a float64 is 0xCB + 8 big-endian bytes and a
# non-finite one has every exponent bit set, so its first byte is 0x7F or 0xFF. A payload
# without these two-byte runs holds no non-finite float; the rare finite one that holds them
# takes the slow path, which changes nothing finite.
_NAN_F64: Final = b"\xcb\x7f"
_NEG_F64: Final = b"\xcb\xff"


class Codec(Protocol):
    """A way to put messages into MQTT payload bytes and back."""

    name: str
    content_type: str

    def encode(self, message: Envelope) -> bytes:
        """Serialise one message."""
        ...

    def decode(self, data: Payload) -> Message:
        """Parse and validate one message, raising DecodeError on anything invalid."""
        ...


class _SchemaOnly(msgspec.Struct):
    schema: str = ""


# What msgspec may raise besides its own DecodeError: RecursionError on a value nested deeper
# than the interpreter's stack (an unknown field of 1,000 nested arrays is 2 KB); the others on
# input that is not a plain byte buffer.
_DECODER_FAILURES: Final = (RecursionError, BufferError, TypeError, ValueError, OverflowError)

_PeekDecoder = msgspec.json.Decoder[_SchemaOnly] | msgspec.msgpack.Decoder[_SchemaOnly]


def _failure(exc: Exception) -> DecodeError:
    """Our error for one of :data:`_DECODER_FAILURES`."""
    if isinstance(exc, RecursionError):
        return DecodeError("not a valid payload: values nest too deeply")
    return DecodeError(f"not a valid payload: {type(exc).__name__}: {exc}")


def _explain(exc: msgspec.DecodeError, data: Payload, peek: _PeekDecoder) -> DecodeError:
    """Turn msgspec's error into ours, naming an unknown schema when that is the cause."""
    if isinstance(exc, msgspec.ValidationError):
        try:
            schema = peek.decode(data).schema
        except (msgspec.DecodeError, *_DECODER_FAILURES):
            schema = ""
        if schema and schema not in SCHEMAS:
            family = schema.split("/", 1)[0]
            known = sorted(s for s in SCHEMAS if s.split("/", 1)[0] == family)
            hint = f"; this build knows {', '.join(known)}" if known else ""
            return UnknownSchema(f"unknown schema {schema!r}{hint}")
        if not schema:
            return UnknownSchema("the payload has no 'schema' field naming its type")
        return InvalidMessage(f"{schema}: {exc}")
    return DecodeError(f"not a valid payload: {exc}")


class JsonCodec:
    """UTF-8 JSON, one object per payload, readable by any MQTT client."""

    name = "json"
    content_type = "application/json"

    def __init__(self) -> None:
        self._encoder = msgspec.json.Encoder()
        self._decoder = msgspec.json.Decoder(Message)
        self._peek = msgspec.json.Decoder(_SchemaOnly)

    def encode(self, message: Envelope) -> bytes:
        """Serialise one message as JSON."""
        return self._encoder.encode(message)

    def decode(self, data: Payload) -> Message:
        """Parse and validate one JSON message."""
        return self._decode(_buffer(data))

    def _decode(self, data: bytes | bytearray) -> Message:
        try:
            message: Message = self._decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise _explain(exc, data, self._peek) from None
        except _DECODER_FAILURES as exc:
            raise _failure(exc) from None
        return message


def _finite(value: Any) -> Any:
    """``value`` (builtins) with every NaN and infinity replaced by None, as JSON sends them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


class BinaryCodec:
    """MessagePack behind the header ``EF 01``: about half the bytes of JSON."""

    name = "msgpack"
    content_type = "application/vnd.edgefleet.msgpack; v=1"

    def __init__(self) -> None:
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(Message)
        self._peek = msgspec.msgpack.Decoder(_SchemaOnly)

    def encode(self, message: Envelope) -> bytes:
        """Serialise one message as headed MessagePack."""
        return _BINARY_HEADER + self._encoder.encode(message)

    def decode(self, data: Payload) -> Message:
        """Parse and validate one headed MessagePack message; NaN and infinities read as None."""
        return self._decode(_buffer(data))

    def _decode(self, data: bytes | bytearray) -> Message:
        if len(data) < 2 or data[0] != BINARY_MAGIC:
            raise DecodeError("not an edgefleet binary payload (missing the 0xEF header)")
        if data[1] != BINARY_VERSION:
            raise UnknownSchema(
                f"binary codec version {data[1]} is not known; this build reads {BINARY_VERSION}"
            )
        body = memoryview(data)[2:]
        try:
            if _NAN_F64 in data or _NEG_F64 in data:
                body = memoryview(self._encoder.encode(_finite(msgspec.msgpack.decode(body))))
            message: Message = self._decoder.decode(body)
        except msgspec.DecodeError as exc:
            raise _explain(exc, body, self._peek) from None
        except _DECODER_FAILURES as exc:
            raise _failure(exc) from None
        return message


def _buffer(data: Payload) -> bytes | bytearray:
    """Check a payload's type and size; a memoryview of any shape becomes plain bytes."""
    if isinstance(data, bytes | bytearray):
        size = len(data)
    elif isinstance(data, memoryview):
        # msgspec reads only contiguous views, and a view of ints indexes to ints, not bytes.
        size = data.nbytes
    else:
        raise DecodeError(f"a payload is bytes, got {type(data).__name__}")
    if size > MAX_PAYLOAD_BYTES:
        raise PayloadTooLarge(f"payload of {size} bytes is over the {MAX_PAYLOAD_BYTES}-byte limit")
    return data.tobytes() if isinstance(data, memoryview) else data


JSON: Final = JsonCodec()
BINARY: Final = BinaryCodec()
CODECS: Final[dict[str, Codec]] = {JSON.name: JSON, BINARY.name: BINARY}


def get_codec(name: str) -> Codec:
    """The codec called ``name`` ("json" or "msgpack")."""
    try:
        return CODECS[name]
    except KeyError:
        raise ValueError(f"unknown codec {name!r}; choose one of {sorted(CODECS)}") from None


def encode(message: Envelope, codec: str = "json") -> bytes:
    """Serialise ``message`` with the named codec."""
    return get_codec(codec).encode(message)


def decode(data: Payload) -> Message:
    """Decode a payload of either codec, telling them apart by the first byte."""
    data = _buffer(data)
    first = data[:1]
    if first == b"{" or first.isspace():
        return JSON._decode(data)
    if first == _BINARY_HEADER[:1]:
        return BINARY._decode(data)
    if not data:
        raise DecodeError("empty payload")
    raise DecodeError("not an edgefleet payload: neither a JSON object nor the 0xEF binary header")


def expected_types(topic: Topic) -> tuple[type[Envelope], ...]:
    """The message types allowed on a topic."""
    match topic.kind:
        case Kind.STATUS:
            return (Status,)
        case Kind.TELEMETRY:
            return (STREAMS.get(topic.name or "", ReadingBatch),)
        case Kind.EVENT:
            return (Event,)
        case Kind.CMD_ACK:
            return (CommandAck,)
        case Kind.CMD:
            cmd = COMMANDS.get(topic.name or "")
            return (cmd,) if cmd is not None else ()


def check_topic(topic: Topic, message: Message) -> None:
    """Raise unless ``message`` may travel on ``topic`` and, if from a device, names its sender.

    A device that publishes under another device's subtree, or a payload whose type does not
    belong on the topic, is refused here: this is the cloud's check when the broker has no ACLs.
    """
    allowed = expected_types(topic)
    if not isinstance(message, allowed):
        names = ", ".join(t.__name__ for t in allowed) or "nothing known"
        raise TopicError(f"{type(message).__name__} may not be sent on {topic}; expected {names}")
    if topic.kind is not Kind.CMD and message.device_id != topic.device:
        raise TopicError(
            f"device {message.device_id!r} published on the topic of device {topic.device!r}"
        )
    if isinstance(message, Event) and message.kind != topic.name:
        raise TopicError(f"event of kind {message.kind!r} sent on event topic {topic.name!r}")
    if isinstance(message, CommandAck) and message.command != topic.name:
        raise TopicError(f"ack for {message.command!r} sent on the ack topic of {topic.name!r}")
