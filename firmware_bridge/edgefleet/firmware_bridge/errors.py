"""The typed errors of the serial bridge: bad frames, bad lines, lost links, refused commands."""

from __future__ import annotations

from edgefleet.protocol.errors import EdgefleetError, ProtocolError


class BridgeError(EdgefleetError):
    """Base of every error the serial bridge raises on purpose."""

    reason = "bridge"


class FrameError(ProtocolError, BridgeError):
    """A serial frame breaks the framing contract of docs/serial-protocol.md."""

    reason = "bad-frame"


class CobsError(FrameError):
    """The bytes between two 0x00 delimiters are not valid COBS."""

    reason = "bad-cobs"


class TruncatedFrame(FrameError):
    """A frame is shorter than its header and CRC, or than the length its header declares."""

    reason = "truncated"


class FrameTooLong(FrameError):
    """A frame is longer than MAX_ENCODED_LENGTH; the bytes up to the next 0x00 are dropped."""

    reason = "too-long"


class CrcMismatch(FrameError):
    """The CRC-32 at the end of a frame does not match its bytes (noise, lost bytes)."""

    reason = "crc-mismatch"


class UnsupportedVersion(FrameError):
    """The frame's protocol version byte is one this build does not speak."""

    reason = "bad-version"


class LengthMismatch(FrameError):
    """The header's payload length differs from the payload actually carried."""

    reason = "bad-length"


class UnknownMessageType(FrameError):
    """The frame's message type byte is not one of MsgType."""

    reason = "unknown-type"


class PayloadInvalid(FrameError):
    """The payload passed the CRC but does not parse as its message type (a firmware bug).

    The header passed the CRC too, so ``seq`` and ``msg_type`` name the frame once it was read.
    For a command, ``command`` is its code byte and ``nack`` the NACK code an MCU answers with
    (0x01 bad arguments, 0x02 unknown command, 0x04 malformed; docs/serial-protocol.md).
    """

    reason = "bad-payload"

    def __init__(self, message: str, *, command: int = 0, nack: int = 0x04) -> None:
        super().__init__(message)
        self.command = command
        self.nack = nack
        self.seq: int | None = None
        self.msg_type: int | None = None


class MalformedLine(ProtocolError, BridgeError):
    """A text line (CSV or JSON) does not match the configured channel map."""

    reason = "bad-line"


class PartialLine(MalformedLine):
    """The bytes before the first newline after opening the port: a line joined mid-way."""

    reason = "partial-line"


class LinkError(BridgeError):
    """The serial port could not be used."""

    reason = "link"


class PortUnavailable(LinkError):
    """The serial port cannot be opened (missing, unplugged, or busy)."""

    reason = "port-unavailable"


class LinkTimeout(LinkError):
    """Nothing arrived on the link within its read timeout."""

    reason = "timeout"


class LinkClosed(LinkError):
    """The link was closed by its owner."""

    reason = "closed"


class CommandFailed(BridgeError):
    """A command sent to the microcontroller did not succeed."""

    reason = "command-failed"


class CommandNacked(CommandFailed):
    """The microcontroller refused a command; ``code`` is its NACK code."""

    reason = "nack"

    def __init__(self, message: str, *, code: int) -> None:
        super().__init__(message)
        self.code = code


class CommandTimeout(CommandFailed):
    """No ACK or NACK came back for a command after all retries."""

    reason = "no-ack"
