"""Ingest against a real Mosquitto: exactly-once storage, commit-acks after commit, fleet state."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.cloud_devices import TestDevice
from support.cloud_ingest import running_ingest, sqlite_url, unique_fleet

from edgefleet.cloud.broker import MosquittoBroker
from edgefleet.cloud.ingest.batch import BatchBuilder
from edgefleet.cloud.store import open_store
from edgefleet.cloud.store.base import TelemetryStore
from edgefleet.protocol import topics as t
from edgefleet.protocol.messages import Status


@pytest.fixture
def store(tmp_path: Path):
    s = open_store(sqlite_url(tmp_path))
    yield s
    s.close()


def _wait_count(store: TelemetryStore, table: str, n: int, dev: TestDevice) -> bool:
    return dev.wait(lambda: store.count(table) >= n, 15)


def test_records_stored_once_and_outbox_empties(mosquitto: MosquittoBroker, store) -> None:
    fleet = unique_fleet()
    with running_ingest(mosquitto.url, store, fleet):
        dev = TestDevice(mosquitto.host, mosquitto.port, "dev-a", fleet)
        dev.birth()
        seqs = dev.send_readings(10) + dev.send_inference(5)
        dev.send_health(cpu_percent=12.0, outbox_depth=3)
        dev.send_event("boot")
        assert dev.wait_outbox_empty()
        dev.close()
    assert store.record_keys("readings", "dev-a") == [(dev.boot_id, s) for s in seqs[:10]]
    assert len(store.record_keys("inference", "dev-a")) == 5
    assert store.count("health") == 1
    assert store.count("events") == 1
    state = store.device("dev-a")
    assert state.online
    assert state.agent_version == "test-1.0"
    assert state.cpu_percent == 12.0
    assert state.outbox_depth == 3


def test_redelivered_duplicates_stored_once_and_committed(
    mosquitto: MosquittoBroker, store
) -> None:
    fleet = unique_fleet()
    with running_ingest(mosquitto.url, store, fleet) as (worker,):
        dev = TestDevice(mosquitto.host, mosquitto.port, "dev-b", fleet)
        dev.send_readings(20)
        assert dev.wait_outbox_empty()
        # The device did not see the commits (say, it rebooted before they arrived): it
        # resends everything, three times over; each copy is committed again, stored never.
        for _ in range(3):
            assert dev.replay_all() == 1
            assert dev.wait_outbox_empty(), "a duplicate must be committed again"
        dev.close()
    assert store.count("readings") == 20
    assert worker.stats.duplicates == 60
    assert worker.stats.inserted == 20


def test_a_batch_keeps_the_status_that_supersedes() -> None:
    topic = t.parse(t.status("f1", "d1"))

    def status(state: str, reason: str, boot: str, sent_at: float) -> Status:
        return Status(
            device_id="d1", boot_id=boot, seq=0, sent_at=sent_at, state=state, reason=reason
        )  # type: ignore[arg-type]

    b = BatchBuilder()
    b.add(topic, status("online", "start", "new", 200.0), 1.0)
    b.add(topic, status("offline", "lwt", "old", 100.0), 2.0)  # a late will of the last boot
    st = b.batch.devices["d1"].status
    assert st is not None
    assert (st.online, st.boot_id, st.sent_at) == (True, "new", 200.0)
    b.add(topic, status("offline", "lwt", "new", 150.0), 3.0)  # this boot's will: applies
    st = b.batch.devices["d1"].status
    assert st is not None
    assert (st.online, st.boot_id) == (False, "new")
