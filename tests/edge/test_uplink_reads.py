"""The uplink's sender reads the outbox only when something may be there to send."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from edgefleet.edge.config import UplinkConfig
from edgefleet.edge.outbox import Outbox, StoredRow
from edgefleet.edge.sequencer import Sequencer
from edgefleet.edge.uplink import Uplink
from edgefleet.protocol.codec import decode, get_codec
from edgefleet.protocol.messages import ReadingBatch


class Wire:
    """A connected transport that takes every publish (PUBACKs are not modelled)."""

    def __init__(self) -> None:
        self.connected = True
        self.sent: list[tuple[str, bytes]] = []

    @property
    def pending(self) -> int:
        return 0

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> bool:
        self.sent.append((topic, payload))
        return True

    async def run(self) -> None:
        return None

    async def close(self, final: tuple[str, bytes] | None = None, wait_s: float = 5.0) -> None:
        return None

    def abort(self) -> None:
        return None


class CountingOutbox(Outbox):
    """An outbox that counts the sender's reads."""

    reads = 0

    def read_after(self, after_id: int, limit: int) -> list[StoredRow]:
        self.reads += 1
        return super().read_after(after_id, limit)


def _seqs(wire: Wire) -> list[int]:
    out: list[int] = []
    for _topic, payload in wire.sent:
        msg = decode(payload)
        assert isinstance(msg, ReadingBatch)
        out += [r.seq for r in msg.records]
    return out


def test_wake_ups_without_new_records_do_not_read(tmp_path: Path) -> None:
    async def main() -> None:
        db = ThreadPoolExecutor(1)
        box = CountingOutbox(tmp_path / "o.sqlite", synchronous="normal")
        wire = Wire()
        up = Uplink(
            UplinkConfig(batch_max=10),
            box,
            wire,
            Sequencer("boot1"),
            get_codec("json"),
            fleet="f",
            device_id="d-1",
            db_executor=db,
        )
        one = np.zeros((1, 2), dtype=np.float32)
        up.add_readings("readings", ("a", "b"), 1000.0, 1.0, one)
        await up.flush()
        await up._send_some()
        assert _seqs(wire) == [1]
        reads = box.reads
        for _ in range(5):  # PUBACKs and commits wake the sender: nothing new to read
            await up._send_some()
        assert box.reads == reads
        # A flush writes again: the next wake-up reads and sends it.
        up.add_readings("readings", ("a", "b"), 1001.0, 1.0, one)
        await up.flush()
        await up._send_some()
        assert _seqs(wire) == [1, 2]
        # A new session replays from the oldest row, reading again.
        up.on_connected()
        await up._send_some()
        assert _seqs(wire) == [1, 2, 1, 2]
        db.shutdown()
        box.close()

    asyncio.run(main())


def test_a_long_outbox_is_read_to_its_end(tmp_path: Path) -> None:
    async def main() -> None:
        db = ThreadPoolExecutor(1)
        box = CountingOutbox(tmp_path / "o.sqlite", synchronous="normal")
        wire = Wire()
        cfg = UplinkConfig(batch_max=5)  # reads of 20 rows
        up = Uplink(
            cfg, box, wire, Sequencer("boot1"), get_codec("json"),
            fleet="f", device_id="d-2", db_executor=db,
        )  # fmt: skip
        up.add_readings("readings", ("a",), 0.0, 1.0, np.zeros((47, 1), dtype=np.float32))
        await up.flush()
        await up._send_some()
        assert _seqs(wire) == list(range(1, 48))
        assert box.reads == 3  # 20 + 20 + 7: the short read says the end was reached
        db.shutdown()
        box.close()

    asyncio.run(main())
