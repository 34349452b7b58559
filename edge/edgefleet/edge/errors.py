"""The typed errors of the edge agent, each with a stable ``reason`` code."""

from __future__ import annotations

from edgefleet.protocol.errors import BundleError, ConfigError, EdgefleetError

__all__ = [
    "AgentError",
    "BundleError",
    "ConfigError",
    "DownloadFailed",
    "GoldenMismatch",
    "Incompatible",
    "OutboxError",
    "RuntimeUnavailable",
    "SourceError",
    "TaskFailed",
    "TransportError",
]


class AgentError(EdgefleetError):
    """Base of every error the agent raises on purpose."""

    reason = "agent"


class RuntimeUnavailable(AgentError):
    """No installed inference backend can load this model."""

    reason = "runtime-unavailable"
    exit_code = 3


class SourceError(AgentError):
    """A sensor source cannot be opened or produced unusable data."""

    reason = "source"


class OutboxError(AgentError):
    """The SQLite outbox cannot be opened or written."""

    reason = "outbox"


class TransportError(AgentError):
    """The MQTT connection cannot be set up (bad TLS files, bad URL)."""

    reason = "transport"


class TaskFailed(AgentError):
    """One of the agent's tasks (inference, uplink, transport, health) died of a bug."""

    reason = "task-failed"


class DownloadFailed(BundleError):
    """A bundle could not be downloaded, or its archive is not the one the command names."""

    reason = "download-failed"


class Incompatible(BundleError):
    """A bundle's tensors or preprocessing do not fit the running source and pipeline."""

    reason = "incompatible"


class GoldenMismatch(BundleError):
    """A bundle's model does not reproduce its golden vectors on this device."""

    reason = "golden-mismatch"
