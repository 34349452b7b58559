"""Ed25519 keys and signatures for model bundles (via ``cryptography``).

``cryptography`` is imported inside the functions that need it: a device's agent imports this
package's types without loading it (it verifies bundles in a short-lived child process).
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from edgefleet.protocol.errors import BundleUnsigned, KeyFileError, SignatureInvalid, WrongKey

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

PRIVATE_KEY_FILE = "edgefleet-signing.key"
PUBLIC_KEY_FILE = "edgefleet-signing.pub"


class Signature(msgspec.Struct, frozen=True, kw_only=True):
    """Contents of ``manifest.sig``."""

    alg: str = "ed25519"
    key_id: str
    sig: str


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short, stable name for a public key: the first 16 hex digits of its sha256."""
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_keypair(out_dir: Path, *, overwrite: bool = False) -> tuple[Path, Path]:
    """Write a new PEM key pair into ``out_dir``; the private key file is mode 0600."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    out_dir.mkdir(parents=True, exist_ok=True)
    priv_path, pub_path = out_dir / PRIVATE_KEY_FILE, out_dir / PUBLIC_KEY_FILE
    if not overwrite and (priv_path.exists() or pub_path.exists()):
        raise KeyFileError(
            f"{priv_path} or {pub_path} already exists; pass overwrite to replace the key pair"
        )
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return priv_path, pub_path


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read a PEM Ed25519 private key, raising :class:`KeyFileError` with the fix."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except OSError as exc:
        raise KeyFileError(f"cannot read private key {path}: {exc.strerror}") from None
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} is not an Ed25519 key; make one with `edgefleet keys generate`")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Read a PEM Ed25519 public key, raising :class:`KeyFileError` with the fix."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except OSError as exc:
        raise KeyFileError(f"cannot read public key {path}: {exc.strerror}") from None
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path} is not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path} is not an Ed25519 public key")
    return key


def sign(data: bytes, key: Ed25519PrivateKey) -> bytes:
    """The ``manifest.sig`` bytes for ``data``."""
    sig = Signature(key_id=key_id(key.public_key()), sig=base64.b64encode(key.sign(data)).decode())
    return msgspec.json.encode(sig) + b"\n"


def verify(data: bytes, signature: bytes | None, trusted: list[Ed25519PublicKey]) -> str:
    """Check ``signature`` over ``data`` against the trusted keys; return the signer's key id.

    Raises :class:`BundleUnsigned`, :class:`WrongKey` or :class:`SignatureInvalid`.
    """
    from cryptography.exceptions import InvalidSignature

    if not signature:
        raise BundleUnsigned(
            "the bundle has no manifest.sig: sign it with `edgefleet models build`"
        )
    try:
        parsed = msgspec.json.decode(signature, type=Signature)
        raw = base64.b64decode(parsed.sig, validate=True)
    except (msgspec.DecodeError, ValueError):
        raise SignatureInvalid("manifest.sig does not parse as an edgefleet signature") from None
    if parsed.alg != "ed25519":
        raise SignatureInvalid(f"signature algorithm {parsed.alg!r} is not accepted (ed25519 only)")
    keys = {key_id(k): k for k in trusted}
    if not keys:
        raise WrongKey("no trusted public key is configured: nothing can be verified")
    key = keys.get(parsed.key_id)
    if key is None:
        raise WrongKey(
            f"signed by key {parsed.key_id}, which is not trusted here "
            f"(trusted: {', '.join(sorted(keys))})"
        )
    try:
        key.verify(raw, data)
    except InvalidSignature:
        raise SignatureInvalid(
            f"the signature by key {parsed.key_id} does not match manifest.json: "
            "the manifest was changed after signing"
        ) from None
    return parsed.key_id
