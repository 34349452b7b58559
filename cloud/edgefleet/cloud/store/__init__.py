"""Telemetry stores behind one seam, chosen by the scheme of a database URL."""

from __future__ import annotations

from collections.abc import Callable

from edgefleet.cloud.errors import StoreURLError
from edgefleet.cloud.store.base import TelemetryStore


def _sqlite(url: str) -> TelemetryStore:
    from edgefleet.cloud.store.sqlite import SqliteStore

    return SqliteStore(url)


def _postgres(url: str) -> TelemetryStore:
    from edgefleet.cloud.store.postgres import PostgresStore

    return PostgresStore(url)


# URL scheme -> backend factory; backends are imported only when chosen.
BACKENDS: dict[str, Callable[[str], TelemetryStore]] = {
    "sqlite": _sqlite,
    "postgresql": _postgres,
    "postgres": _postgres,
}


def open_store(url: str, *, migrate: bool = True) -> TelemetryStore:
    """Open the store a URL names (``sqlite:///path`` or ``postgresql://...``), migrated."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    factory = BACKENDS.get(scheme)
    if factory is None:
        raise StoreURLError(
            f"database URL {url!r} has no known scheme; use sqlite:///path/edgefleet.db "
            "or postgresql://user@host:5432/dbname"
        )
    store = factory(url)
    if migrate:
        store.migrate()
    return store


__all__ = ["BACKENDS", "TelemetryStore", "open_store"]
