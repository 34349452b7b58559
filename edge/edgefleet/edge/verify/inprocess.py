"""Verify bundles in the agent's own process (tests, ``agent check``, the simulator)."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from edgefleet.edge.verify.base import Checked

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


class InProcessVerifier:
    """``verify_bundle`` here: loads ``cryptography`` into this process for good (~7 MB RSS)."""

    def __init__(self, key_files: Sequence[str | Path]) -> None:
        from edgefleet.protocol.signing import load_public_key

        self.key_files = [Path(k) for k in key_files]
        self._trusted = [load_public_key(k) for k in self.key_files]

    @classmethod
    def from_keys(cls, keys: Sequence[Ed25519PublicKey]) -> InProcessVerifier:
        """A verifier for keys already loaded (callers that hold public key objects)."""
        verifier = cls(())
        verifier._trusted = list(keys)
        return verifier

    def verify(self, path: Path) -> Checked:
        """Check the bundle directory ``path``."""
        from edgefleet.protocol.bundle import verify_bundle

        return verify_bundle(path, self._trusted)

    def unpack_and_verify(self, archive: Path, dest: Path) -> Checked:
        """Unpack (or copy a directory) into ``dest`` and verify it there."""
        from edgefleet.protocol.bundle import unpack_bundle

        if archive.is_dir():
            shutil.copytree(archive, dest, dirs_exist_ok=True)
        else:
            unpack_bundle(archive, dest)
        return self.verify(dest)
