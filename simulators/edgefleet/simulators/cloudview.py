"""What the invariant checks read from the cloud: its store directly, or a running cloud's API.

``--with-cloud`` (the default) starts the cloud in the coordinating process, and the checks read
its store (:class:`StoreView`). ``--cloud URL`` points the fleet at a cloud that runs elsewhere;
then the checks read the same facts through its HTTP API (:class:`ApiView`): each device's
record keys from ``GET /v1/telemetry/{table}?device=...`` and the assignments from
``GET /v1/assignments``.
"""

from __future__ import annotations

import re
import urllib.request
from typing import Any, Protocol, get_args
from urllib.parse import quote, urlparse

import msgspec

from edgefleet.cloud.client import CloudClient
from edgefleet.cloud.store.base import Assignment, RecordTable, TelemetryStore
from edgefleet.protocol.errors import ConfigError, EdgefleetError
from edgefleet.simulators.errors import SimulationError

TABLES: tuple[RecordTable, ...] = get_args(RecordTable)
# The telemetry endpoint's largest page; a device holding more rows in one table cannot be
# audited through it (ApiView refuses rather than under-count).
API_PAGE = 100_000
_RECORDS_METRIC = re.compile(r"^edgefleet_ingest_records_total\{[^}]*\}\s+([0-9.e+]+)$", re.M)


class CloudView(Protocol):
    """The cloud's facts the invariants need."""

    def device_keys(self, device_id: str) -> dict[str, list[tuple[str, int]]]:
        """(boot_id, seq) of every record the cloud stored for a device, per table."""
        ...

    def assignments(self, limit: int = 1000) -> list[Assignment]:
        """Assignments, newest first, with each target's state."""
        ...

    def records(
        self, table: RecordTable, device_id: str, since: float, until: float, limit: int
    ) -> list[dict[str, Any]]:
        """A device's records of one table with ``since <= t < until``, newest first."""
        ...

    def stored(self) -> int | None:
        """Records stored so far (for the live view; None when unknown)."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


class StoreView:
    """Reads the cloud's store directly (the cloud runs in this process)."""

    def __init__(self, store: TelemetryStore) -> None:
        self.store = store

    def device_keys(self, device_id: str) -> dict[str, list[tuple[str, int]]]:
        """(boot_id, seq) of every stored record of a device, per table."""
        return {table: self.store.record_keys(table, device_id) for table in TABLES}

    def assignments(self, limit: int = 1000) -> list[Assignment]:
        """Assignments, newest first."""
        return self.store.assignments(limit=limit)

    def records(
        self, table: RecordTable, device_id: str, since: float, until: float, limit: int
    ) -> list[dict[str, Any]]:
        """A device's records in a time range, from the store."""
        return self.store.records(table, device_id=device_id, since=since, until=until, limit=limit)

    def stored(self) -> int | None:
        """Rows in every record table."""
        return sum(self.store.count(t) for t in TABLES)

    def close(self) -> None:
        """Close the store connection."""
        self.store.close()


def check_cloud_url(url: str) -> str:
    """``http(s)://HOST[:PORT]`` of a running cloud's API, without a trailing slash."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigError(f"--cloud {url!r}: give the cloud's API as http://HOST:PORT")
    return url.rstrip("/")


class ApiView:
    """Reads a running cloud through its HTTP API (the cloud runs elsewhere)."""

    def __init__(self, url: str, timeout: float = 30.0, token: str | None = None) -> None:
        self.url = check_cloud_url(url)
        self.client = CloudClient(self.url, timeout=timeout, token=token)

    def check(self) -> dict[str, Any]:
        """``GET /healthz``: the cloud answers and its store is up (SimulationError if not)."""
        try:
            health: dict[str, Any] = self.client.request("GET", "/healthz")
        except EdgefleetError as exc:
            raise SimulationError(
                f"--cloud {self.url}: {exc}; start it (edgefleet cloud run) or use --with-cloud"
            ) from None
        if not isinstance(health, dict) or not health.get("ok"):
            raise SimulationError(f"--cloud {self.url}: /healthz answered {health!r}")
        return health

    def device_keys(self, device_id: str) -> dict[str, list[tuple[str, int]]]:
        """(boot_id, seq) of a device's records per table, one request per table."""
        keys: dict[str, list[tuple[str, int]]] = {}
        for table in TABLES:
            rows = self.client.request(
                "GET", f"/v1/telemetry/{table}?device={quote(device_id)}&limit={API_PAGE}"
            )
            if len(rows) >= API_PAGE:
                raise SimulationError(
                    f"{device_id} has {API_PAGE} or more {table} records in the cloud at "
                    f"{self.url}: too many to check through its API; run shorter or use "
                    "--with-cloud"
                )
            keys[table] = [(str(r["boot_id"]), int(r["seq"])) for r in rows]
        return keys

    def assignments(self, limit: int = 1000) -> list[Assignment]:
        """``GET /v1/assignments``."""
        rows = self.client.request("GET", f"/v1/assignments?limit={limit}")
        return msgspec.convert(rows, list[Assignment])

    def records(
        self, table: RecordTable, device_id: str, since: float, until: float, limit: int
    ) -> list[dict[str, Any]]:
        """``GET /v1/telemetry/{table}?device=...&since=...&until=...``."""
        rows: list[dict[str, Any]] = self.client.request(
            "GET",
            f"/v1/telemetry/{table}?device={quote(device_id)}&since={since!r}"
            f"&until={until!r}&limit={min(limit, API_PAGE)}",
        )
        return rows

    def stored(self) -> int | None:
        """Records ingested, from the cloud's Prometheus counters (None if it does not say)."""
        try:
            req = urllib.request.Request(self.url + "/metrics")  # noqa: S310 - checked http(s)
            if self.client.token:
                req.add_header("Authorization", f"Bearer {self.client.token}")
            with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310
                text = resp.read().decode()
        except (OSError, ValueError):
            return None
        values = _RECORDS_METRIC.findall(text)
        return int(sum(float(v) for v in values)) if values else None

    def close(self) -> None:
        """Nothing held open (one connection per request)."""
