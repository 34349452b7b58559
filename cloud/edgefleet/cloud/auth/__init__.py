"""Who may call the HTTP API: tokens, roles, dashboard sessions, device credentials."""

from edgefleet.cloud.auth import tokens
from edgefleet.cloud.auth.deps import Authenticator, authenticator, require, require_device
from edgefleet.cloud.auth.errors import EdgefleetAuthError, Forbidden, Unauthenticated
from edgefleet.cloud.auth.grants import DownloadGrants
from edgefleet.cloud.auth.roles import Principal, Role
from edgefleet.cloud.auth.sessions import CSRF_HEADER, SESSION_COOKIE, Sessions
from edgefleet.cloud.auth.tokens import TokenStore, issue_device_token, revoke_device_tokens

__all__ = [
    "CSRF_HEADER",
    "SESSION_COOKIE",
    "Authenticator",
    "DownloadGrants",
    "EdgefleetAuthError",
    "Forbidden",
    "Principal",
    "Role",
    "Sessions",
    "TokenStore",
    "Unauthenticated",
    "authenticator",
    "issue_device_token",
    "require",
    "require_device",
    "revoke_device_tokens",
    "tokens",
]
