"""The error hierarchy every edgefleet part translates its failures into."""

from __future__ import annotations


class EdgefleetError(Exception):
    """Base of every error edgefleet raises on purpose.

    ``reason`` is a short, stable, machine-readable code (it travels in command acks and
    quarantine rows); the message is for people and says what to do.
    """

    reason: str = "error"
    # The process exit status when this error ends an `edgefleet` command (docs/cli.md).
    exit_code: int = 1

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class ProtocolError(EdgefleetError):
    """Something on the wire breaks the edgefleet contract."""

    reason = "protocol"


class TopicError(ProtocolError):
    """A topic or an id inside it is not valid under ``edgefleet/v1``."""

    reason = "bad-topic"


class DecodeError(ProtocolError):
    """A payload could not be decoded into a known message."""

    reason = "undecodable"


class PayloadTooLarge(DecodeError):
    """A payload is larger than the protocol allows."""

    reason = "too-large"


class UnknownSchema(DecodeError):
    """A payload names a schema or a schema version this build does not know."""

    reason = "unknown-schema"


class InvalidMessage(DecodeError):
    """A payload decoded but a field has the wrong type or an out-of-range value."""

    reason = "invalid"


class AuthError(ProtocolError):
    """A message's signature or MAC does not vouch for it; ``reason`` says how it failed."""

    reason = "bad-signature"


class BundleError(EdgefleetError):
    """A model bundle is refused; ``reason`` says why in one word."""

    reason = "bundle"
    exit_code = 5


class BundleUnsigned(BundleError):
    """The bundle carries no signature."""

    reason = "unsigned"


class SignatureInvalid(BundleError):
    """The signature does not match the manifest (the manifest was changed after signing)."""

    reason = "bad-signature"


class WrongKey(BundleError):
    """The bundle was signed by a key this verifier does not trust."""

    reason = "untrusted-key"


class HashMismatch(BundleError):
    """A file's bytes differ from the sha256 the signed manifest lists."""

    reason = "hash-mismatch"


class MissingFile(BundleError):
    """A file listed in the manifest is not in the bundle."""

    reason = "missing-file"


class UnexpectedFile(BundleError):
    """The bundle holds a file its manifest does not list."""

    reason = "unexpected-file"


class ManifestInvalid(BundleError):
    """The manifest does not parse or breaks the manifest schema."""

    reason = "bad-manifest"


class KeyFileError(EdgefleetError):
    """A key file is missing, unreadable, or not an Ed25519 key."""

    reason = "bad-key"
    exit_code = 4


class ConfigError(EdgefleetError):
    """A configuration file or option is invalid; the message names the key and the fix."""

    reason = "bad-config"
    exit_code = 4


class MissingExtra(EdgefleetError):
    """A command needs an optional dependency group that is not installed."""

    reason = "missing-extra"
    exit_code = 3


class InvariantViolation(EdgefleetError):
    """A fleet run broke one of its invariants (lost or duplicated data, a missing ack...)."""

    reason = "invariant"
    exit_code = 6


class Incompatible(BundleError):
    """A bundle does not fit the device (channels, sample rate, runtime, task, input spec)."""

    reason = "incompatible"
