"""A failing outbox write (a real SQLite lock held by another writer) loses nothing, no hole."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor

from edgefleet.edge.config import UplinkConfig
from edgefleet.edge.outbox import Outbox
from edgefleet.edge.pipeline import Result
from edgefleet.edge.sequencer import Sequencer
from edgefleet.edge.uplink import Uplink
from edgefleet.protocol.codec import get_codec


def _results(n: int, t0: float) -> list[Result]:
    return [Result(t0 + i, [0.1, 0.9], "fault", 0.9, 0.01) for i in range(n)]


async def _until(pred) -> None:
    deadline = time.monotonic() + 30.0
    while not pred():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def _uplink_on(box, device_id, on_store_error=None):
    """A transport-less uplink over ``box`` whose failed writes are quick to retry."""
    # The outbox waits 5 s for a lock by default; a short wait makes each failed try quick.
    box._db.execute("PRAGMA busy_timeout=20")
    seq = Sequencer()
    box.register_boot(seq.boot_id)
    db = ThreadPoolExecutor(1)
    uplink = Uplink(
        UplinkConfig(flush_interval_s=0.01),
        box,
        None,
        seq,
        get_codec("msgpack"),
        fleet="default",
        device_id=device_id,
        db_executor=db,
        on_store_error=on_store_error,
    )
    return seq, db, uplink


def test_failed_writes_are_retried_without_loss_or_holes(tmp_path):
    path = tmp_path / "outbox.sqlite"
    box = Outbox(path)
    reports: list[tuple[str, int]] = []
    _seq, db, uplink = _uplink_on(box, "flaky-1", lambda msg, n: reports.append((msg, n)))
    # Another writer holds the database: every append fails with "database is locked".
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")

    async def main() -> None:
        task = asyncio.create_task(uplink.run())
        uplink.add_results("m", "1", _results(6, 0.0))
        await _until(lambda: uplink.counters.store_errors >= 2)
        # More records while the outbox refuses writes: they queue behind the numbered ones.
        uplink.add_results("m", "1", _results(4, 10.0))
        await _until(lambda: uplink.counters.store_errors >= 4)
        assert (box.depth, uplink.pending) == (0, 10)
        other.execute("ROLLBACK")
        await _until(lambda: uplink.pending == 0)
        uplink.add_results("m", "1", _results(3, 20.0))
        await _until(lambda: uplink.pending == 0)
        uplink.stop()
        await task

    try:
        asyncio.run(main())
        rows = box.read_after(0, 100)
        assert box.depth == 13
        # Every record stored once, seqs contiguous from 1, in the order they were produced.
        assert [r.seq for r in rows] == list(range(1, 14))
        assert uplink.counters.stored == 13
        assert uplink.failing == 0
        # One report when the writes started failing (the first of a run), one at recovery.
        assert reports[0][1] == 1
        assert "locked" in reports[0][0]
        assert reports[-1] == ("", 0)
        assert len(reports) == uplink.counters.store_errors + 1
    finally:
        other.close()
        box.close()
        db.shutdown()


def test_unwritten_records_are_bounded_like_the_outbox(tmp_path):
    path = tmp_path / "outbox.sqlite"
    box = Outbox(path, max_records=8)
    seq, db, uplink = _uplink_on(box, "full-1")
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")

    async def main() -> None:
        uplink.add_results("m", "1", _results(6, 0.0))
        assert not await uplink.flush()
        uplink.add_results("m", "1", _results(6, 10.0))
        assert not await uplink.flush()
        # 12 numbered, 8 fit the outbox's bound: the 4 oldest go, as the outbox would drop them.
        assert uplink.pending == 8
        other.execute("ROLLBACK")
        assert await uplink.flush()

    try:
        asyncio.run(main())
        assert [r.seq for r in box.read_after(0, 100)] == list(range(5, 13))
        # The memory drops are in the persisted counter that health reports.
        assert (box.depth, box.drops, uplink.drops) == (8, 4, 4)
        assert uplink.counters.dropped == 4
        box.close()
        again = Outbox(path, readonly=True)
        assert again.stats().drops == 4
        assert again.stats().boots == {seq.boot_id: 12}
        again.close()
    finally:
        other.close()
        db.shutdown()
