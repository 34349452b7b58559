"""Errors of federated runs, in the cloud's error hierarchy."""

from __future__ import annotations

from edgefleet.cloud.errors import CloudError
from edgefleet.protocol.errors import ConfigError


class FlRunError(CloudError):
    """A federated run failed (the ServerApp crashed, the SuperLink died, no result)."""

    reason = "fl-run"


class ControlApiError(FlRunError):
    """The SuperLink's Control API kept failing, or refused a call (its log says why)."""

    reason = "fl-control-api"


class FlSettingsError(ConfigError):
    """Federated-run options that cannot work together."""

    reason = "bad-fl-settings"


class QuorumNotReached(FlRunError):
    """No round reached its quorum of clients: the model is unchanged."""

    reason = "fl-quorum"


class QuorumUnreachable(QuorumNotReached):
    """Too many devices refused or failed for any round to reach quorum: the run ended early."""
