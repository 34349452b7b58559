"""The cloud's command key, and the signer every publisher of a command goes through.

The key is made at the cloud's first start (``<workdir>/keys/command.key``, mode 0600, with
``command.pub`` beside it in the format ``edgefleet keys generate`` writes); agents list the
public key in ``[trust] command_keys``. Each cloud process (the API's publisher, every ingest
worker) builds its own :class:`CommandSigner`: one signer id and one sequence per process, so
no counter is shared between processes (docs/security.md, "Commands and records").
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from edgefleet.protocol import codec
from edgefleet.protocol.commandauth import COMMAND_TTL_S, COMMIT_TTL_S, Signer
from edgefleet.protocol.messages import Commit, Envelope
from edgefleet.protocol.signing import generate_keypair, load_private_key

KEY_FILE: Final = "command.key"
PUB_FILE: Final = "command.pub"


def key_paths(workdir: Path) -> tuple[Path, Path]:
    """(private, public) command key paths of a cloud working directory."""
    keys = Path(workdir) / "keys"
    return keys / KEY_FILE, keys / PUB_FILE


def write_public_key(private_key: Path, public_key: Path) -> None:
    """Write the PEM public half of ``private_key`` to ``public_key`` (unless it holds it)."""
    from cryptography.hazmat.primitives import serialization

    pem = (
        load_private_key(private_key)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    if not public_key.is_file() or public_key.read_bytes() != pem:
        public_key.parent.mkdir(parents=True, exist_ok=True)
        public_key.write_bytes(pem)


def ensure_command_key(workdir: Path) -> tuple[Path, Path, bool]:
    """The command key pair of ``workdir``, made if missing; (private, public, created)."""
    priv, pub = key_paths(workdir)
    if priv.exists():
        if not pub.exists():
            write_public_key(priv, pub)
        return priv, pub, False
    made_priv, made_pub = generate_keypair(priv.parent / ".new-command-key", overwrite=True)
    os.replace(made_priv, priv)
    os.replace(made_pub, pub)
    made_priv.parent.rmdir()
    return priv, pub, True


class CommandSigner:
    """Signs (or, for commit-acks to a device with a record key, MACs) command payloads."""

    def __init__(self, private_key_path: Path, *, codec_name: str = "json") -> None:
        self.path = Path(private_key_path)
        self._signer = Signer(load_private_key(self.path))
        self._encode = codec.get_codec(codec_name).encode

    @property
    def key_id(self) -> str:
        """The id of the command key (what agents see in ``auth.key_id``)."""
        return self._signer.key_id

    def sign(self, topic: str, message: Envelope, *, mac_key: bytes | None = None) -> bytes:
        """The payload of ``message`` on ``topic``, with its signature (or MAC)."""
        ttl = COMMIT_TTL_S if isinstance(message, Commit) else COMMAND_TTL_S
        return self._signer.seal(topic, message, self._encode, ttl_s=ttl, mac_key=mac_key)
