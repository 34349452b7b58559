"""The model registry: signed bundle archives stored by content, verified before they count."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgefleet.cloud.errors import NotFound
from edgefleet.cloud.store.base import ModelVersion, TelemetryStore
from edgefleet.protocol.bundle import (
    MAX_BUNDLE_BYTES,
    sha256_file,
    unpack_bundle,
    verify_bundle,
)
from edgefleet.protocol.errors import BundleError

_SHA = frozenset("0123456789abcdef")


class ModelRegistry:
    """Bundle archives under ``root/blobs/ab/<sha256>.tar.gz``, their manifests in the store.

    A push is verified like a device would verify it (signature by a trusted key, then every
    file's sha256) before anything is kept, so the registry never serves a bundle that every
    agent would refuse.
    """

    def __init__(self, root: Path, store: TelemetryStore, trusted: list[Ed25519PublicKey]) -> None:
        self.root = Path(root)
        self.store = store
        self.trusted = list(trusted)
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)

    def blob_path(self, sha256: str) -> Path:
        """Where the archive with this sha256 lives (it may not exist)."""
        if len(sha256) != 64 or not _SHA.issuperset(sha256):
            raise NotFound(f"{sha256!r} is not a sha256 of a stored bundle")
        return self.root / "blobs" / sha256[:2] / f"{sha256}.tar.gz"

    def push(self, data: bytes) -> ModelVersion:
        """Verify and store a bundle archive given in memory; see :meth:`push_file`."""
        if len(data) > MAX_BUNDLE_BYTES:
            raise BundleError("bundle archive is over the size limit", reason="bad-archive")
        with self.upload() as up:
            up.write(data)
            return self.push_file(up.finish())

    def upload(self) -> Upload:
        """A temporary file in the registry to stream an upload into, then :meth:`push_file`."""
        return Upload(self.root / "tmp")

    def push_file(self, archive: Path) -> ModelVersion:
        """Verify and store the bundle archive at ``archive``; return the registered version.

        Raises a :class:`~edgefleet.protocol.errors.BundleError` subclass (``untrusted-key``,
        ``bad-signature``, ``hash-mismatch``, ``bad-archive``...) for a bundle it refuses.
        """
        size = archive.stat().st_size
        if size > MAX_BUNDLE_BYTES:
            raise BundleError("bundle archive is over the size limit", reason="bad-archive")
        sha = sha256_file(archive)
        with tempfile.TemporaryDirectory(dir=self.root / "tmp") as tmp:
            verified = verify_bundle(unpack_bundle(archive, Path(tmp) / "b"), self.trusted)
            target = self.blob_path(sha)
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                partial = target.with_suffix(".part")
                shutil.copyfile(archive, partial)
                os.replace(partial, target)
        m = verified.manifest
        return self.store.put_model(
            ModelVersion(
                name=m.name,
                version=m.version,
                sha256=sha,
                size=size,
                runtime=m.runtime,
                key_id=verified.key_id,
                description=m.description,
                metrics=dict(m.metrics),
                lineage=msgspec.to_builtins(m.lineage),
                manifest=msgspec.to_builtins(m),
                created_at=m.created_at,
                uploaded_at=time.time(),
            )
        )

    def archive(self, name: str, version: str) -> tuple[ModelVersion, Path]:
        """A registered version and the path of its archive."""
        model = self.store.model(name, version)
        path = self.blob_path(model.sha256)
        if not path.is_file():
            raise NotFound(f"the archive of {model.ref} is missing from {self.root}")
        return model, path

    def delete(self, name: str, version: str) -> ModelVersion:
        """Unregister a version (refused while in use) and delete its archive if no other has it."""
        model = self.store.delete_model(name, version)
        if not any(m.sha256 == model.sha256 for m in self.store.models()):
            self.blob_path(model.sha256).unlink(missing_ok=True)
        return model


class Upload:
    """A file under the registry's ``tmp/`` that an upload streams into; removed on exit."""

    def __init__(self, directory: Path) -> None:
        fd, name = tempfile.mkstemp(dir=directory, suffix=".upload.tar.gz")
        self.path = Path(name)
        self._file = os.fdopen(fd, "wb")
        self.size = 0

    def write(self, chunk: bytes) -> None:
        """Append a chunk."""
        self._file.write(chunk)
        self.size += len(chunk)

    def finish(self) -> Path:
        """Close the file (before it is read back); its path."""
        self._file.close()
        return self.path

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)
