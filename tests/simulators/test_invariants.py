"""The end-of-run accounting against a real (SQLite) cloud store: what each check catches."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.cloud.store import open_store
from edgefleet.cloud.store.base import DeviceUpdate, IngestBatch
from edgefleet.simulators.cloudview import StoreView
from edgefleet.simulators.device import CrashRecord, DeviceResult
from edgefleet.simulators.invariants import check_device, check_run


@pytest.fixture
def view(tmp_path: Path) -> Iterator[StoreView]:
    v = StoreView(open_store(f"sqlite:///{tmp_path / 'store.db'}"))
    yield v
    v.close()


def store_readings(view: StoreView, device: str, boot: str, seqs: range) -> None:
    now = time.time()
    batch = IngestBatch()
    batch.records["readings"] = [
        (device, boot, s, now + s, now + s, "readings", '["x"]', f"[{s}]") for s in seqs
    ]
    batch.devices[device] = DeviceUpdate(device, "sim", now)
    view.store.write_batch(batch)


def result(samples: int, **kw: object) -> DeviceResult:
    base: dict[str, object] = {
        "device_id": "d1", "group": "g", "boots": {"b1": 8}, "dropped": 0, "left": [],
        "crashes": [], "published_messages": 0, "replays": 0, "resends": 0, "chunks": 0,
        "samples": samples, "publish_readings": True,
    }  # fmt: skip
    base.update(kw)
    return DeviceResult(**base)  # type: ignore[arg-type]


def test_every_sample_read_is_a_stored_reading(view: StoreView) -> None:
    store_readings(view, "d1", "b1", range(1, 9))
    check = check_device(result(8), view, set())
    assert (check.samples, check.readings_stored, check.samples_unaccounted) == (8, 8, 0)
    assert check.ok


def test_a_sample_that_never_got_a_seq_is_caught(view: StoreView) -> None:
    # Seqs 1..8 all stored: the seq accounting is clean, yet the source handed over 10 samples.
    store_readings(view, "d1", "b1", range(1, 9))
    check = check_device(result(10), view, set())
    assert check.lost == check.missing == 0
    assert check.samples_unaccounted == 2
    assert not check.ok
    checks = check_run([result(10)], view, set(), 1)
    (inv,) = [i for i in checks.invariants if i.name.startswith("every sample read")]
    assert not inv.ok
    assert "2 unaccounted" in inv.detail


def test_samples_unsaved_at_a_crash_or_dropped_are_accounted(view: StoreView) -> None:
    store_readings(view, "d1", "b1", range(1, 9))
    crash = CrashRecord(boot_id="b0", at=0.0, connected=False, unsaved=2)
    assert check_device(result(10, crashes=[crash]), view, set()).samples_unaccounted == 0
    assert check_device(result(10, dropped=2), view, set()).samples_unaccounted == 0
    # Readings still in the outbox count as well; more readings than samples never do.
    left = [("b1", 9), ("b1", 10)]
    assert check_device(result(10, left=left, left_readings=left, boots={"b1": 10}), view, set()).ok
    assert check_device(result(6), view, set()).samples_unaccounted == 2


def test_devices_that_do_not_publish_readings_are_not_held_to_it(view: StoreView) -> None:
    store_readings(view, "d1", "b1", range(1, 9))
    assert check_device(result(500, publish_readings=False), view, set()).ok


def test_records_of_earlier_runs_are_ignored_only_when_asked(view: StoreView) -> None:
    store_readings(view, "d1", "b1", range(1, 9))
    store_readings(view, "d1", "old-boot", range(1, 4))
    assert check_device(result(8), view, set()).unknown == 3
    assert check_device(result(8), view, set(), this_run_only=True).ok


def test_a_reading_both_stored_and_still_queued_counts_once(view: StoreView) -> None:
    # Seqs 7 and 8 were stored but their commit-ack had not arrived when the run ended, so
    # they are still in the outbox as well: 8 samples, 8 readings, not 10.
    store_readings(view, "d1", "b1", range(1, 9))
    left = [("b1", 7), ("b1", 8)]
    check = check_device(result(8, left=left, left_readings=left), view, set())
    assert check.samples_unaccounted == 0
    assert (
        check_device(result(10, left=left, left_readings=left), view, set()).samples_unaccounted
        == 2
    )
