"""FastAPI dependencies: who a request is (token, session or device) and whether it may."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from fastapi import Request

from edgefleet.cloud.auth.errors import Forbidden, Unauthenticated
from edgefleet.cloud.auth.grants import DownloadGrants
from edgefleet.cloud.auth.roles import Principal, Role
from edgefleet.cloud.auth.sessions import CSRF_HEADER, SESSION_COOKIE, Sessions
from edgefleet.cloud.auth.tokens import TokenStore

_SAFE = frozenset({"GET", "HEAD", "OPTIONS"})
# (device_id, sha256) -> True when that archive was assigned to that device.
AssignedCheck = Callable[[str, str], bool]


@dataclass(slots=True)
class Authenticator:
    """What the dependencies check credentials against; kept on ``app.state.auth``."""

    tokens: TokenStore
    sessions: Sessions = field(default_factory=Sessions)
    grants: DownloadGrants | None = None
    assigned: AssignedCheck | None = None

    def principal(self, request: Request) -> Principal:
        """The caller of ``request``, or Unauthenticated."""
        header = request.headers.get("authorization")
        if header is not None:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated("the Authorization header must be 'Bearer <token>'")
            return self.tokens.authenticate(token.strip())
        sid = request.cookies.get(SESSION_COOKIE)
        if sid:
            session = self.sessions.get(sid)
            if session is None or not self.tokens.live(session.principal.token_id):
                raise Unauthenticated(
                    "the dashboard session ended (logged out, expired, its token revoked or "
                    "the cloud restarted): log in again",
                    reason="session-expired",
                )
            if request.method not in _SAFE:
                _check_csrf(request, self.sessions, session.csrf)
            return session.principal
        raise Unauthenticated(
            "this route needs a credential: send 'Authorization: Bearer <token>' (make one with "
            "`edgefleet cloud token create`; the first admin token is in the cloud's "
            "workdir/admin.token) or log in to the dashboard at /login"
        )


def _check_csrf(request: Request, sessions: Sessions, csrf: str) -> None:
    from edgefleet.cloud.auth.sessions import Session

    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host", ""):
        raise Forbidden(f"cross-origin request from {origin} refused", reason="csrf")
    probe = Session(Principal("", Role.viewer, "session"), csrf, 0.0)
    if not sessions.csrf_ok(probe, request.headers.get(CSRF_HEADER)):
        raise Forbidden(
            f"a state-changing request with the session cookie needs the {CSRF_HEADER} header "
            "(the dashboard's scripts send it)",
            reason="csrf",
        )


def authenticator(request: Request) -> Authenticator:
    """The app's :class:`Authenticator`."""
    auth: Authenticator | None = getattr(request.app.state, "auth", None)
    if auth is None:
        raise Unauthenticated("this cloud has no credentials configured", reason="auth-disabled")
    return auth


def require(role: Role) -> Callable[..., Principal]:
    """A dependency: 401 without a valid credential, 403 below ``role`` or with a device's."""

    def dependency(request: Request) -> Principal:
        p = authenticator(request).principal(request)
        if p.kind == "device":
            raise Forbidden(
                f"{p.name} is a device credential: it only downloads the bundles assigned to it"
            )
        if not p.role.allows(role):
            raise Forbidden(
                f"{p.name} has role {p.role.value}; {request.method} {request.url.path} needs "
                f"{role.value} (`edgefleet cloud token create --role {role.value}`)"
            )
        return p

    dependency.__name__ = f"require_{role.value}"
    return dependency


def require_device() -> Callable[..., Principal]:
    """A dependency for bundle downloads: any API credential, or the device it was assigned to.

    The archive's sha256 comes from the ``sha256`` path parameter; a ``grant`` query parameter
    made by :class:`~edgefleet.cloud.auth.grants.DownloadGrants` (with ``device`` and
    ``expires``) also admits the request, for that archive and device until it expires.
    """

    def dependency(request: Request) -> Principal:
        auth = authenticator(request)
        sha = str(request.path_params.get("sha256", ""))
        q = request.query_params
        grant = q.get("grant")
        if grant is not None and "authorization" not in request.headers:
            return _granted(auth, sha, q.get("device", ""), q.get("expires", ""), grant)
        p = auth.principal(request)
        if p.kind != "device":
            return p
        if not sha:
            raise Forbidden("a device credential downloads bundles by sha256 (/v1/blobs/...)")
        if p.device_id is None or auth.assigned is None or not auth.assigned(p.device_id, sha):
            raise Forbidden(
                f"{p.device_id} was not assigned the bundle {sha[:12]}…", reason="not-assigned"
            )
        return p

    return dependency


def _granted(auth: Authenticator, sha: str, device_id: str, expires: str, grant: str) -> Principal:
    if not sha or auth.grants is None or not device_id or not expires.isdigit():
        raise Forbidden(
            "a download grant needs the bundle's sha256 URL with its device and expires",
            reason="bad-grant",
        )
    if int(expires) < time.time():
        raise Forbidden(
            "the download grant expired: assign the model again for a fresh URL",
            reason="grant-expired",
        )
    if not auth.grants.check(sha, device_id, int(expires), grant):
        raise Forbidden("the download grant does not match this archive", reason="bad-grant")
    return Principal(f"grant:{device_id}", Role.viewer, "device", device_id)
