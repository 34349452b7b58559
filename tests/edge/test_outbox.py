"""The SQLite outbox: durable across reopen, bounded with exact drop counts, commit deletes."""

from __future__ import annotations

import sqlite3

from edgefleet.edge.outbox import Outbox, Row
from edgefleet.protocol.messages import CommitRange


def _rows(boot: str, first: int, n: int, size: int = 10) -> list[Row]:
    return [
        Row(boot, s, "inference", "t", "m@1", False, b"x" * size) for s in range(first, first + n)
    ]


def test_append_read_commit_and_reopen(tmp_path):
    path = tmp_path / "o.sqlite"
    box = Outbox(path)
    box.register_boot("b1")
    assert box.append(_rows("b1", 1, 10)) == 0
    assert [r.seq for r in box.read_after(0, 100)] == list(range(1, 11))
    assert box.commit([CommitRange("b1", 3, 5), CommitRange("other", 1, 9)]) == 3
    assert box.depth == 7
    box.close()
    again = Outbox(path)
    assert again.depth == 7
    assert [r.seq for r in again.read_after(0, 100)] == [1, 2, 6, 7, 8, 9, 10]
    assert again.stats().boots == {"b1": 10}
    assert again.oldest_id() == 1
    assert again.commit([CommitRange("b1", 1, 10)]) == 7
    assert again.oldest_id() is None
    again.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_caps_drop_oldest_and_count_exactly(tmp_path):
    box = Outbox(tmp_path / "o.sqlite", max_records=25, max_bytes=10_000)
    dropped = sum(box.append(_rows("b", 1 + 10 * i, 10)) for i in range(5))
    assert dropped == 25 == box.drops
    assert [r.seq for r in box.read_after(0, 100)] == list(range(26, 51))
    # by bytes: 100-byte rows, 1000 bytes allowed
    box2 = Outbox(tmp_path / "o2.sqlite", max_records=1000, max_bytes=1000)
    assert box2.append(_rows("b", 1, 15, size=100)) == 5
    assert box2.stats().bytes == 1000
    box2.close()
    box.close()
    assert Outbox(tmp_path / "o.sqlite").drops == 25  # the counter is persisted


def test_training_buffer_is_bounded(tmp_path):
    box = Outbox(tmp_path / "o.sqlite", training_samples_max=3)
    for i in range(5):
        box.add_training_sample(float(i), "m@1", bytes([i]), None)
    assert [t for t, *_ in box.training_samples()] == [2.0, 3.0, 4.0]


def test_readonly_open_for_status(tmp_path):
    path = tmp_path / "o.sqlite"
    box = Outbox(path)
    box.append(_rows("b", 1, 3))
    ro = Outbox(path, readonly=True)
    assert ro.stats().depth == 3
    ro.close()
    box.close()


def test_normal_synchronous_mode_is_a_choice_and_full_the_default(tmp_path):
    import sqlite3

    from edgefleet.edge.outbox import Outbox

    for mode, expected in (("full", 2), ("normal", 1)):
        box = Outbox(tmp_path / f"{mode}.db", synchronous=mode)
        assert box._db.execute("PRAGMA synchronous").fetchone() == (expected,)
        box.close()
    with sqlite3.connect(tmp_path / "full.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
