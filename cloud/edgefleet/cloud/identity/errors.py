"""Errors of device identity: the CA, claim tokens, provisioning, renewal and revocation."""

from __future__ import annotations

from edgefleet.cloud.errors import CloudError
from edgefleet.protocol.errors import ConfigError


class IdentityError(CloudError):
    """Base of identity failures; the message says what to fix."""

    reason = "identity"


class CAError(ConfigError):
    """The project CA cannot be made or read (a missing key, a file that is not PEM)."""

    reason = "bad-ca"


class ClaimRefused(IdentityError):
    """A claim token is unknown, used up, expired or for another fleet (HTTP 403)."""

    reason = "claim-refused"
    exit_code = 5


class BadRequestKey(IdentityError):
    """A CSR or public key is unusable: wrong algorithm, bad signature, wrong subject (422)."""

    reason = "bad-key"


class RenewRefused(IdentityError):
    """A renewal was not proven by a current, unrevoked certificate of this device (403)."""

    reason = "renew-refused"
    exit_code = 5


class UnknownIdentity(IdentityError):
    """No identity has been issued to this device (HTTP 404)."""

    reason = "not-found"
    exit_code = 1
