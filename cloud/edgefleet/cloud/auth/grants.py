"""Download grants: an HMAC in a bundle URL, scoped to one archive and one device, expiring."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from pathlib import Path
from urllib.parse import urlencode

# As long as a signed command lives (edgefleet.protocol.commandauth.COMMAND_TTL_S): an agent
# that was offline gets its assign-model late and must still be able to fetch the archive.
GRANT_TTL_S = 7 * 24 * 3600.0


class DownloadGrants:
    """Grants made with a secret in ``<workdir>/keys/grant.key``.

    The cloud puts a grant in the URL of each ``assign-model`` it sends: it admits that URL's
    archive, for the device the command was sent to, until it expires. An agent needs no other
    credential to download what it was assigned, and a leaked URL fetches one bundle, for a while.
    """

    def __init__(self, secret: bytes, ttl_s: float = GRANT_TTL_S) -> None:
        if len(secret) < 16:
            raise ValueError("a grant secret needs at least 16 bytes")
        self._secret = secret
        self.ttl_s = ttl_s

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

    def grant(self, sha256: str, device_id: str, expires: int) -> str:
        """The grant for one archive, one device, until ``expires`` (Unix seconds)."""
        msg = f"blob\0{sha256}\0{device_id}\0{expires}".encode()
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()[:32]

    def check(
        self, sha256: str, device_id: str, expires: int, grant: str, *, now: float | None = None
    ) -> bool:
        """True when ``grant`` was made for this archive and device and has not expired."""
        if expires < (time.time() if now is None else now):
            return False
        return hmac.compare_digest(self.grant(sha256, device_id, expires), grant)

    def url(self, base_url: str, sha256: str, device_id: str, *, now: float | None = None) -> str:
        """The download URL of an archive for one device, with its grant."""
        expires = int((time.time() if now is None else now) + self.ttl_s)
        grant = self.grant(sha256, device_id, expires)
        query = urlencode({"device": device_id, "expires": expires, "grant": grant})
        return f"{base_url.rstrip('/')}/v1/blobs/{sha256}?{query}"
