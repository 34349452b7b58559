"""Errors of the cloud aggregator, each with a stable ``reason`` code and an exit status."""

from __future__ import annotations

from edgefleet.protocol.errors import BundleError, ConfigError, EdgefleetError


class CloudError(EdgefleetError):
    """Base of failures inside the cloud aggregator."""

    reason = "cloud"


class StoreURLError(ConfigError):
    """A database URL names no known backend or cannot be parsed."""

    reason = "bad-db-url"


class StoreError(CloudError):
    """The telemetry store failed or holds data a newer version of edgefleet wrote."""

    reason = "store"


class StoreRefused(StoreError):
    """The store refused a value of the batch (NUL in PostgreSQL text, a number out of range).

    The data is at fault, not the store: ingest isolates the message that carries it and
    quarantines it (reason ``store-refused``) instead of retrying the batch.
    """

    reason = "store-refused"


class SchemaTooNew(StoreError):
    """The database was migrated by a newer edgefleet than this one."""

    reason = "schema-too-new"


class NotFound(CloudError):
    """A device, model version or assignment does not exist."""

    reason = "not-found"
    exit_code = 1


class Conflict(CloudError):
    """The request contradicts what is stored (a version pushed twice with different bytes)."""

    reason = "conflict"


class RegistryRefused(BundleError):
    """The registry refused a pushed bundle (its ``reason`` is the bundle check that failed)."""


class NoTargets(CloudError):
    """An assignment selects no device (unknown ids, an unused tag, an empty fleet)."""

    reason = "no-targets"


class CloudUnreachable(CloudError):
    """The cloud's HTTP API did not answer or answered with an error."""

    reason = "cloud-unreachable"
    exit_code = 1
