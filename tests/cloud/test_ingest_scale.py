"""Ingest under failure and at scale: SIGKILL mid-batch, shared-subscription workers, MQTT 3.1.1."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from support.cloud_devices import TestDevice
from support.cloud_ingest import running_ingest, sqlite_url, unique_fleet

from edgefleet.cloud.broker import EmbeddedBroker, MosquittoBroker
from edgefleet.cloud.launcher import CloudProcess
from edgefleet.cloud.store import open_store


def _resend_until_committed(devs: list[TestDevice], timeout: float = 60.0) -> int:
    """What agents do: resend un-committed records every so often until all are committed.

    Returns how many messages were resent.
    """
    deadline = time.monotonic() + timeout
    resent = 0
    while any(d.outbox for d in devs):
        assert time.monotonic() < deadline, {d.device_id: len(d.outbox) for d in devs}
        for d in devs:
            if d.outbox and not d.wait_outbox_empty(1.0):
                resent += d.resend_unacked()
    return resent


@pytest.mark.slow
def test_sigkill_mid_batch_loses_nothing(mosquitto_factory, tmp_path: Path) -> None:
    broker: MosquittoBroker = mosquitto_factory()
    fleet = unique_fleet()
    db = sqlite_url(tmp_path)
    cloud = CloudProcess(tmp_path / "cloud", broker_url=broker.url, db_url=db, fleet=fleet).start()
    devs = [TestDevice(broker.host, broker.port, f"k{i}", fleet) for i in range(3)]
    sent: dict[str, list[int]] = {d.device_id: [] for d in devs}
    stop = threading.Event()

    def produce(d: TestDevice) -> None:
        while not stop.is_set() and len(sent[d.device_id]) < 3000:
            sent[d.device_id] += d.send_readings(10, wait=False)
            time.sleep(0.002)

    threads = [threading.Thread(target=produce, args=(d,)) for d in devs]
    try:
        for t in threads:
            t.start()
        # Kill once commits flow, while records are still arriving (a batch is in flight).
        assert devs[0].wait(lambda: len(devs[0].commits) >= 3, 20)
        cloud.kill()
        killed_at = {d.device_id: len(d.committed) for d in devs}
        time.sleep(0.3)  # keep publishing into the broker while no ingest runs
        cloud = CloudProcess(
            tmp_path / "cloud", broker_url=broker.url, db_url=db, fleet=fleet
        ).start()
        stop.set()
        for t in threads:
            t.join()
        _resend_until_committed(devs)
    finally:
        stop.set()
        cloud.stop()
        for d in devs:
            d.close()
    store = open_store(db)
    try:
        for d in devs:
            keys = store.record_keys("readings", d.device_id)
            assert keys == [(d.boot_id, s) for s in sorted(sent[d.device_id])]
            assert killed_at[d.device_id] < len(sent[d.device_id])
    finally:
        store.close()


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_three_shared_workers_nothing_lost_nothing_twice(
    mosquitto: MosquittoBroker, tmp_path: Path, request: pytest.FixtureRequest, backend: str
) -> None:
    fleet = unique_fleet()
    url = sqlite_url(tmp_path) if backend == "sqlite" else request.getfixturevalue("pg_url")
    store = open_store(url)
    try:
        with running_ingest(mosquitto.url, store, fleet, workers=3) as workers:
            devs = [TestDevice(mosquitto.host, mosquitto.port, f"s{i}", fleet) for i in range(4)]
            sent: dict[str, list[int]] = {d.device_id: [] for d in devs}
            published = 0
            for _ in range(60):
                for d in devs:
                    sent[d.device_id] += d.send_readings(5, wait=False)
                    published += 1
            for d in devs:
                # Redelivery across workers: every record a second time.
                published += d.replay_all()
            published += _resend_until_committed(devs, 60)
            for d in devs:
                d.close()
        total = sum(len(v) for v in sent.values())
        received = [w.stats.messages for w in workers]
        # Shared: each message reaches one worker. Plain subscriptions would deliver every
        # message to all three (3x), which dedupe alone would hide.
        assert published <= sum(received) < 1.5 * published, (published, received)
        assert all(n >= published / 10 for n in received), (published, received)
        assert sum(w.stats.inserted for w in workers) == total
        for d in devs:
            assert store.record_keys("readings", d.device_id) == [
                (d.boot_id, s) for s in sent[d.device_id]
            ]
    finally:
        store.close()


def test_ingest_over_mqtt311_embedded_broker(embedded_broker: EmbeddedBroker, tmp_path) -> None:
    fleet = unique_fleet()
    store = open_store(sqlite_url(tmp_path))
    try:
        with running_ingest(embedded_broker.url, store, fleet, mqtt_version="3.1.1"):
            dev = TestDevice(embedded_broker.host, embedded_broker.port, "emb", fleet)
            dev.birth()
            seqs = dev.send_readings(5)
            assert dev.wait_outbox_empty(20)
            dev.close()
        assert store.record_keys("readings", "emb") == [(dev.boot_id, s) for s in seqs]
        assert store.device("emb").online
    finally:
        store.close()
