"""Per-device record keys: the shared secret that MACs what a device sends (docs/security.md).

Provisioning registers a device's key (:meth:`RecordKeys.register`); the ingest looks it up
for every message of that device and quarantines one whose MAC does not match (``impostor``),
so a forger who knows a device's next seqs cannot store records, a status or an ack as it.
The ingest also MACs its commit-acks with the same key (another domain), which costs far less
than an Ed25519 signature per commit (bench/command_auth.py).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Literal

from edgefleet.cloud.errors import CloudError
from edgefleet.cloud.store.base import TelemetryStore
from edgefleet.protocol.commandauth import RECORD_KEY_BYTES

# "when-registered": a device without a registered key is accepted unauthenticated (the laptop
# default, said at start); "required": its messages are quarantined as ``unauthenticated``.
RecordMacPolicy = Literal["when-registered", "required"]
# A device provisioned while the ingest runs is found within this many seconds.
MISS_TTL_S = 5.0


class RecordKeys:
    """The record keys of all devices, persisted in the store, cached per process."""

    def __init__(self, store: TelemetryStore, *, clock: Any = time.monotonic) -> None:
        self._store: Any = store
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[bytes | None, float]] = {}

    def register(self, device_id: str, key: bytes) -> None:
        """Store (or replace) ``device_id``'s record key."""
        if len(key) != RECORD_KEY_BYTES:
            raise CloudError(f"a record key is {RECORD_KEY_BYTES} bytes, got {len(key)}")
        with self._store._transaction() as cur:
            cur.execute("DELETE FROM record_keys WHERE device_id = ?", (device_id,))
            cur.execute(
                "INSERT INTO record_keys (device_id, record_key, created_at) VALUES (?, ?, ?)",
                (device_id, key, time.time()),
            )
        with self._lock:
            self._cache[device_id] = (key, float("inf"))

    def forget(self, device_id: str) -> None:
        """Remove ``device_id``'s key (its messages are then judged by the policy)."""
        with self._store._transaction() as cur:
            cur.execute("DELETE FROM record_keys WHERE device_id = ?", (device_id,))
        with self._lock:
            self._cache.pop(device_id, None)

    def get(self, device_id: str) -> bytes | None:
        """``device_id``'s record key, or None if it has none (misses are re-read every 5 s)."""
        now = self._clock()
        with self._lock:
            hit = self._cache.get(device_id)
        if hit is not None and (hit[0] is not None or now - hit[1] < MISS_TTL_S):
            return hit[0]
        with self._store._reader() as cur:
            rows = cur.query("SELECT record_key FROM record_keys WHERE device_id = ?", (device_id,))
        key = bytes(rows[0]["record_key"]) if rows else None
        with self._lock:
            self._cache[device_id] = (key, now)
        return key
