"""Keys for tests: one command key pair per test process, and a signer that uses it.

Agents refuse unsigned commands (secure by default), so every helper that starts an agent
lists :func:`command_public_key` in its ``[trust]`` and every helper that sends a command signs
it with :func:`sign_command`. A test that forges a command publishes its own bytes instead.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

from edgefleet.protocol import codec, topics
from edgefleet.protocol.commandauth import COMMIT_TTL_S, Signer
from edgefleet.protocol.messages import Commit, Envelope
from edgefleet.protocol.signing import generate_keypair, load_private_key

COMMAND_KEY = "command.key"
COMMAND_PUB = "command.pub"


@functools.cache
def _key_dir() -> Path:
    out = Path(tempfile.mkdtemp(prefix="edgefleet-test-keys-"))
    priv, pub = generate_keypair(out)
    priv.rename(out / COMMAND_KEY)
    pub.rename(out / COMMAND_PUB)
    return out


def command_private_key() -> Path:
    """The test cloud's command-signing private key (PEM, 0600)."""
    return _key_dir() / COMMAND_KEY


def command_public_key() -> Path:
    """The public half, for agents' ``[trust] command_keys``."""
    return _key_dir() / COMMAND_PUB


@functools.cache
def signer() -> Signer:
    """A signer by the test command key (one per test process, like one cloud process)."""
    return Signer(load_private_key(command_private_key()))


def sign_command(topic: str, message: Envelope, codec_name: str = "json") -> bytes:
    """``message`` signed for ``topic`` by the test command key."""
    ttl = COMMIT_TTL_S if isinstance(message, Commit) else 3600.0
    return signer().seal(topic, message, codec.get_codec(codec_name).encode, ttl_s=ttl)


def signed_payload(topic: str, payload: bytes) -> bytes:
    """A command payload signed, unless it is signed already or is not a command topic."""
    try:
        parsed = topics.parse(topic)
        if parsed.kind is not topics.Kind.CMD:
            return payload
        msg = codec.decode(payload)
    except Exception:
        return payload
    if msg.auth is not None:
        return payload
    return sign_command(topic, msg, "msgpack" if payload[:1] == b"\xef" else "json")
