"""Dashboard sessions: a random id in an HttpOnly, SameSite=Strict cookie, and a CSRF token."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass

from edgefleet.cloud.auth.roles import Principal

SESSION_COOKIE = "edgefleet_session"
CSRF_HEADER = "X-CSRF-Token"


@dataclass(frozen=True, slots=True)
class Session:
    """One browser login: who, its CSRF token, when it ends."""

    principal: Principal
    csrf: str
    expires_at: float


class Sessions:
    """Sessions kept in memory (a restart logs browsers out), keyed by the id's SHA-256."""

    def __init__(self, ttl_s: float = 12 * 3600.0, max_sessions: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self._by_hash: dict[str, Session] = {}
        self._lock = threading.Lock()

    def open(self, principal: Principal) -> tuple[str, Session]:
        """A new session for ``principal``: its cookie value and the session."""
        sid = secrets.token_urlsafe(32)
        now = time.time()
        session = Session(
            Principal(principal.name, principal.role, "session", None, principal.token_id),
            secrets.token_urlsafe(24),
            now + self.ttl_s,
        )
        with self._lock:
            self._expire(now)
            if len(self._by_hash) >= self.max_sessions:
                oldest = min(self._by_hash, key=lambda k: self._by_hash[k].expires_at)
                del self._by_hash[oldest]
            self._by_hash[_h(sid)] = session
        return sid, session

    def get(self, sid: str) -> Session | None:
        """The live session of a cookie value, or None."""
        with self._lock:
            s = self._by_hash.get(_h(sid))
            if s is not None and s.expires_at < time.time():
                del self._by_hash[_h(sid)]
                return None
            return s

    def close(self, sid: str) -> None:
        """Log out."""
        with self._lock:
            self._by_hash.pop(_h(sid), None)

    def close_token(self, token_id: str) -> int:
        """End every session opened with a token (it was revoked)."""
        with self._lock:
            gone = [k for k, s in self._by_hash.items() if s.principal.token_id == token_id]
            for k in gone:
                del self._by_hash[k]
        return len(gone)

    @staticmethod
    def csrf_ok(session: Session, presented: str | None) -> bool:
        """True when the request's CSRF header matches the session's token."""
        return presented is not None and hmac.compare_digest(session.csrf, presented)

    def _expire(self, now: float) -> None:
        for k in [k for k, s in self._by_hash.items() if s.expires_at < now]:
            del self._by_hash[k]


def _h(sid: str) -> str:
    return hashlib.sha256(sid.encode()).hexdigest()
