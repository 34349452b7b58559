"""Device identity: the project CA, claim tokens, provisioning, renewal and revocation."""

from edgefleet.cloud.identity.ca import ProjectCA

__all__ = ["ProjectCA"]
