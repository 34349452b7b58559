"""Write, sign, verify, pack and unpack model bundles without any ML framework.

Verification reads only ``manifest.json``, ``manifest.sig`` and raw file bytes, so a device
can refuse a bad bundle before any model parser touches it.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from edgefleet.protocol import signing
from edgefleet.protocol.errors import (
    BundleError,
    HashMismatch,
    ManifestInvalid,
    MissingFile,
    UnexpectedFile,
)
from edgefleet.protocol.manifest import (
    MANIFEST_FILE,
    SIGNATURE_FILE,
    BundleManifest,
    FileEntry,
    FileRole,
    GoldenVectors,
    decode_golden,
    decode_manifest,
    encode_manifest,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

_CHUNK = 1 << 20
MAX_BUNDLE_BYTES = 512 * 1024 * 1024
MAX_BUNDLE_FILES = 64


@dataclass(frozen=True, slots=True)
class VerifiedBundle:
    """A bundle directory whose signature and file hashes have been checked."""

    path: Path
    manifest: BundleManifest
    key_id: str

    @property
    def model_path(self) -> Path:
        """Path of the inference model file."""
        return self.path / self.manifest.model_file

    def golden(self) -> GoldenVectors | None:
        """The bundle's golden vectors, if it has any."""
        if self.manifest.golden is None:
            return None
        return decode_golden((self.path / self.manifest.golden.file).read_bytes())


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _payload_files(directory: Path) -> list[Path]:
    return sorted(
        p
        for p in directory.rglob("*")
        if p.is_file() and p.name not in (MANIFEST_FILE, SIGNATURE_FILE)
    )


def write_bundle(
    directory: Path,
    manifest: BundleManifest,
    key: Ed25519PrivateKey,
    roles: dict[str, FileRole] | None = None,
) -> VerifiedBundle:
    """Hash every file in ``directory``, write the manifest listing them, and sign it.

    ``manifest.files`` is replaced by what is on disk; ``roles`` maps paths to file roles
    (the model file and the golden file get theirs automatically).
    """
    directory = Path(directory)
    roles = dict(roles or {})
    roles.setdefault(manifest.model_file, "model")
    if manifest.golden is not None:
        roles.setdefault(manifest.golden.file, "golden")
    files = []
    for p in _payload_files(directory):
        rel = p.relative_to(directory).as_posix()
        files.append(
            FileEntry(
                path=rel, sha256=sha256_file(p), size=p.stat().st_size, role=roles.get(rel, "other")
            )
        )
    try:
        full = msgspec.structs.replace(manifest, files=files)
        data = encode_manifest(full)
        decode_manifest(data)  # runs every check a verifier will run
    except (ValueError, msgspec.ValidationError) as exc:
        raise ManifestInvalid(f"cannot write bundle: {exc}") from None
    (directory / MANIFEST_FILE).write_bytes(data)
    (directory / SIGNATURE_FILE).write_bytes(signing.sign(data, key))
    return VerifiedBundle(directory, full, signing.key_id(key.public_key()))


def verify_bundle(directory: Path, trusted: list[Ed25519PublicKey]) -> VerifiedBundle:
    """Check a bundle directory: signature by a trusted key, then every file's size and sha256.

    Raises a :class:`~edgefleet.protocol.errors.BundleError` subclass whose ``reason`` names the
    failure (unsigned, untrusted-key, bad-signature, bad-manifest, missing-file, hash-mismatch,
    unexpected-file).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise MissingFile(f"{directory} is not a bundle directory")
    try:
        data = (directory / MANIFEST_FILE).read_bytes()
    except FileNotFoundError:
        raise MissingFile(f"{directory} has no {MANIFEST_FILE}: it is not a bundle") from None
    try:
        sig = (directory / SIGNATURE_FILE).read_bytes()
    except FileNotFoundError:
        sig = None
    # Signature first: nothing in an unauthenticated manifest is worth parsing.
    kid = signing.verify(data, sig, trusted)
    manifest = decode_manifest(data)
    listed = set()
    for entry in manifest.files:
        path = directory / entry.path
        listed.add(entry.path)
        if not path.is_file():
            raise MissingFile(f"{entry.path} is listed in the manifest but not in the bundle")
        size = path.stat().st_size
        if size != entry.size:
            raise HashMismatch(f"{entry.path} is {size} bytes; the manifest says {entry.size}")
        if sha256_file(path) != entry.sha256:
            raise HashMismatch(f"{entry.path} does not match its sha256 in the signed manifest")
    extra = [p.relative_to(directory).as_posix() for p in _payload_files(directory)]
    unlisted = sorted(set(extra) - listed)
    if unlisted:
        raise UnexpectedFile(f"files not listed in the signed manifest: {', '.join(unlisted)}")
    return VerifiedBundle(directory, manifest, kid)


def read_manifest(directory: Path) -> BundleManifest:
    """Read a bundle's manifest without verifying anything (for inspection only)."""
    try:
        return decode_manifest((Path(directory) / MANIFEST_FILE).read_bytes())
    except FileNotFoundError:
        raise MissingFile(f"{directory} has no {MANIFEST_FILE}") from None


def pack_bundle(directory: Path, archive: Path) -> str:
    """Write ``directory`` as a reproducible ``.tar.gz``; return the archive's sha256."""
    import tarfile

    directory = Path(directory)
    buf = io.BytesIO()
    # Fixed mtimes, owners and order make the same bundle pack to the same bytes.
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for p in sorted(directory.rglob("*")):
            if not p.is_file():
                continue
            info = tarfile.TarInfo(p.relative_to(directory).as_posix())
            info.size = p.stat().st_size
            info.mtime = 0
            info.mode = 0o644
            with open(p, "rb") as f:
                tar.addfile(info, f)
    archive = Path(archive)
    tmp = archive.with_suffix(archive.suffix + ".tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, archive)
    return hashlib.sha256(buf.getvalue()).hexdigest()


def unpack_bundle(archive: Path, dest: Path) -> Path:
    """Safely extract a bundle archive into ``dest`` (regular files only, bounded size)."""
    import tarfile

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    total = 0
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            # Entry by entry, not getmembers(): an archive of 300k tiny entries is refused at
            # entry 65 instead of after reading (and holding) all of them.
            members: list[tarfile.TarInfo] = []
            while (m := tar.next()) is not None:
                if len(members) >= MAX_BUNDLE_FILES:
                    raise BundleError(
                        f"archive holds more than {MAX_BUNDLE_FILES} entries (the limit)",
                        reason="bad-archive",
                    )
                members.append(m)
                if not (m.isfile() or m.isdir()):
                    raise BundleError(
                        f"archive entry {m.name!r} is not a regular file", reason="bad-archive"
                    )
                total += m.size
                if total > MAX_BUNDLE_BYTES:
                    raise BundleError(
                        "archive unpacks to more than the bundle size limit", reason="bad-archive"
                    )
            # The 'data' filter refuses absolute paths, '..' and links (PEP 706).
            tar.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleError(
            f"{archive} is not a readable bundle archive: {exc}", reason="bad-archive"
        ) from None
    return dest
