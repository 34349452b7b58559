"""Download grants: an HMAC in a bundle URL, for agents that hold no device token."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path


class DownloadGrants:
    """Grants bound to one bundle's sha256, made with a secret in ``<workdir>/keys/grant.key``.

    The cloud puts a grant in the URL of each ``assign-model`` it sends, so only a device that
    was sent the command (or a holder of an API token) can download the archive.
    """

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("a grant secret needs at least 16 bytes")
        self._secret = secret

    @classmethod
    def load_or_create(cls, path: Path) -> DownloadGrants:
        """Read the secret, or make one (0600) at first start."""
        if path.is_file():
            return cls(path.read_bytes())
        path.parent.mkdir(parents=True, exist_ok=True)
        secret = secrets.token_bytes(32)
        tmp = path.with_suffix(".tmp")
        tmp.touch(0o600)
        tmp.write_bytes(secret)
        tmp.replace(path)
        return cls(secret)

    def grant(self, sha256: str) -> str:
        """The grant for one archive."""
        return hmac.new(self._secret, f"blob:{sha256}".encode(), hashlib.sha256).hexdigest()[:32]

    def check(self, sha256: str, grant: str) -> bool:
        """True when ``grant`` was made by :meth:`grant` for this archive."""
        return hmac.compare_digest(self.grant(sha256), grant)

    def url(self, base_url: str, sha256: str) -> str:
        """The download URL of an archive, with its grant."""
        return f"{base_url.rstrip('/')}/v1/blobs/{sha256}?grant={self.grant(sha256)}"
