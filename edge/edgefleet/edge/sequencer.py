"""Record identity: a fresh boot id per process start and one seq counter shared by all streams."""

from __future__ import annotations

import secrets
import time


def new_boot_id() -> str:
    """A boot id that sorts by start time (seconds in hex) and cannot collide (random tail)."""
    return f"{int(time.time()):08x}-{secrets.token_hex(6)}"


class Sequencer:
    """Hands out ``(boot_id, seq)``; seq 0 is reserved for the status message of the boot."""

    __slots__ = ("boot_id", "last")

    def __init__(self, boot_id: str | None = None) -> None:
        self.boot_id = boot_id or new_boot_id()
        self.last = 0

    def next(self) -> int:
        """The next record seq of this boot (1, 2, 3, ...)."""
        self.last += 1
        return self.last

    def take(self, n: int) -> range:
        """``n`` consecutive seqs at once."""
        first = self.last + 1
        self.last += n
        return range(first, first + n)
