"""The serial bridge between the agent and microcontrollers: framing, line mode, links.

Public API (firmware_bridge/README.md): :class:`SerialLink` yields :data:`Reading` values
(:class:`SampleBatch`, :class:`Status`, :class:`LogLine`, :class:`InferenceResult`) and sends
:data:`Command` values; :class:`McuEmulator` plays a microcontroller on a pty. The frame format
(docs/serial-protocol.md) is defined once, in :mod:`.frames` and :mod:`.messages`.
"""

from edgefleet.firmware_bridge.base import ByteDecoder, DecoderStats, SampleSource
from edgefleet.firmware_bridge.decoder import FrameDecoder
from edgefleet.firmware_bridge.emulator import EmulatorConfig, McuEmulator
from edgefleet.firmware_bridge.errors import (
    BridgeError,
    CobsError,
    CommandFailed,
    CommandNacked,
    CommandTimeout,
    CrcMismatch,
    FrameError,
    FrameTooLong,
    LengthMismatch,
    LinkClosed,
    LinkError,
    LinkTimeout,
    MalformedLine,
    PartialLine,
    PayloadInvalid,
    PortUnavailable,
    TruncatedFrame,
    UnknownMessageType,
    UnsupportedVersion,
)
from edgefleet.firmware_bridge.frames import (
    MAX_ENCODED_LENGTH,
    PROTOCOL_VERSION,
    Frame,
    decode_frame,
    encode_frame,
)
from edgefleet.firmware_bridge.lines import ChannelMap, LineDecoder
from edgefleet.firmware_bridge.link import LinkStats, Reading, SerialLink
from edgefleet.firmware_bridge.messages import (
    Ack,
    Command,
    InferenceResult,
    LogLine,
    Message,
    Nack,
    NackCode,
    Ping,
    Reboot,
    SampleBatch,
    SetActuator,
    SetSampleRate,
    Status,
)

__all__ = [
    "MAX_ENCODED_LENGTH",
    "PROTOCOL_VERSION",
    "Ack",
    "BridgeError",
    "ByteDecoder",
    "ChannelMap",
    "CobsError",
    "Command",
    "CommandFailed",
    "CommandNacked",
    "CommandTimeout",
    "CrcMismatch",
    "DecoderStats",
    "EmulatorConfig",
    "Frame",
    "FrameDecoder",
    "FrameError",
    "FrameTooLong",
    "InferenceResult",
    "LengthMismatch",
    "LineDecoder",
    "LinkClosed",
    "LinkError",
    "LinkStats",
    "LinkTimeout",
    "LogLine",
    "MalformedLine",
    "McuEmulator",
    "Message",
    "Nack",
    "NackCode",
    "PartialLine",
    "PayloadInvalid",
    "Ping",
    "PortUnavailable",
    "Reading",
    "Reboot",
    "SampleBatch",
    "SampleSource",
    "SerialLink",
    "SetActuator",
    "SetSampleRate",
    "Status",
    "TruncatedFrame",
    "UnknownMessageType",
    "UnsupportedVersion",
    "decode_frame",
    "encode_frame",
]
