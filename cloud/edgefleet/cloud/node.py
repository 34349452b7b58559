"""The cloud's own identity on the wire: node id, a boot id per process and a seq counter."""

from __future__ import annotations

import itertools
import secrets
import threading
from dataclasses import dataclass, field

from edgefleet.protocol.topics import validate_id


@dataclass(slots=True)
class CloudNode:
    """Envelope source for messages the cloud sends (commits, commands); thread-safe."""

    node_id: str = "cloud"
    boot_id: str = field(default_factory=lambda: secrets.token_hex(8))
    _counter: itertools.count[int] = field(default_factory=itertools.count, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        validate_id(self.node_id, "cloud node id")

    def next_seq(self) -> int:
        """The next seq of this process's boot."""
        with self._lock:
            return next(self._counter)
