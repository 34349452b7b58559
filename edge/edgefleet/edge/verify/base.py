"""The Verifier seam: check a bundle's signature and hashes before any model parser reads it."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from edgefleet.protocol.bundle import VerifiedBundle

# What a verifier vouches for: the protocol's own value object. Importing it loads neither
# cryptography nor tarfile (the protocol imports them only where it signs, verifies or unpacks).
Checked = VerifiedBundle


class Verifier(Protocol):
    """Checks bundles against the fleet's trusted keys; raises BundleError subclasses."""

    def verify(self, path: Path) -> Checked:
        """Check the bundle directory ``path`` (signature first, then every file's hash)."""
        ...

    def unpack_and_verify(self, archive: Path, dest: Path) -> Checked:
        """Unpack ``archive`` (a ``.tar.gz`` or a bundle directory) into ``dest``, then verify."""
        ...
