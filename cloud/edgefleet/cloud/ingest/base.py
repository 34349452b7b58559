"""The seam between a worker's network thread and the stage that decodes and stores."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from edgefleet.protocol.messages import CommitRange

Raw = bytes | bytearray


class Chunk(NamedTuple):
    """Messages as the network thread received them: raw topic bytes and payloads.

    A plain tuple of bytes pickles fast: the process stage gets these through a pipe.
    """

    received_at: float
    messages: list[tuple[bytes, Raw]]


class DeviceCommit(NamedTuple):
    """The ranges one committed batch stored for one device (its commit-ack to send)."""

    fleet: str
    device: str
    ranges: list[CommitRange]
    # The device's record key: the commit-ack is MAC'd with it (else signed by the command key).
    mac_key: bytes | None = None


@dataclass(slots=True)
class Outcome:
    """What the stage did since its last outcome: a committed batch and/or counters.

    ``commits`` covers exactly the records of a batch that COMMIT made durable (duplicates
    included); the network thread turns it into commit-acks.
    """

    commits: list[DeviceCommit] = field(default_factory=list)
    valid: int = 0
    records: int = 0
    inserted: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)
    throttled: int = 0
    store_errors: int = 0
    # Set when a batch was written: how long the write took, and when its first message came.
    batch_seconds: float | None = None
    batch_started: float = 0.0
    newest_sent_at: float = 0.0
    # CPU seconds the stage used since its previous outcome (its process, or its thread).
    cpu_s: float = 0.0


class Stage(Protocol):
    """Decodes, checks, batches and writes what the network thread hands over.

    The network thread calls every method; the stage works elsewhere (a thread or a process)
    and signals finished outcomes by making :meth:`fileno` readable.
    """

    @property
    def pid(self) -> int | None:
        """The process the stage runs in, when it has one of its own."""
        ...

    @property
    def restarts(self) -> int:
        """How often the stage was replaced after it died."""
        ...

    def start(self, timeout: float) -> None:
        """Start working; raise StoreError when the store cannot be opened."""
        ...

    def submit(self, chunk: Chunk) -> None:
        """Hand over received messages; blocks while the stage is too far behind."""
        ...

    def fileno(self) -> int:
        """A descriptor that is readable while outcomes are waiting."""
        ...

    def outcomes(self) -> list[Outcome]:
        """The outcomes finished so far (never blocks)."""
        ...

    def close(self, timeout: float) -> list[Outcome]:
        """Write what is pending, stop, and return the last outcomes."""
        ...
