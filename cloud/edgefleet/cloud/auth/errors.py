"""Authentication and authorization errors (401, 403), in the API's one error shape."""

from __future__ import annotations

from edgefleet.protocol.errors import EdgefleetError


class EdgefleetAuthError(EdgefleetError):
    """A request the credentials checks refuse (401 or 403)."""


class Unauthenticated(EdgefleetAuthError):
    """No credential, or one the cloud does not know or has revoked (HTTP 401)."""

    reason = "unauthenticated"


class Forbidden(EdgefleetAuthError):
    """A known credential whose role does not allow the request (HTTP 403)."""

    reason = "forbidden"
