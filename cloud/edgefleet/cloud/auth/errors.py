"""Authentication and authorization errors (401, 403), in the API's one error shape."""

from __future__ import annotations

from edgefleet.protocol.errors import EdgefleetError


class Unauthenticated(EdgefleetError):
    """No credential, or one the cloud does not know or has revoked (HTTP 401)."""

    reason = "unauthenticated"


class Forbidden(EdgefleetError):
    """A known credential whose role does not allow the request (HTTP 403)."""

    reason = "forbidden"
