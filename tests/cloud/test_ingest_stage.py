"""Where ingest decodes and writes: a child process per worker (default) or a thread."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from support.cloud_devices import TestDevice
from support.cloud_ingest import running_ingest, sqlite_url, unique_fleet

from edgefleet.cloud.app import CloudConfig
from edgefleet.cloud.broker import MosquittoBroker
from edgefleet.cloud.errors import StoreError
from edgefleet.cloud.ingest import IngestSettings, IngestWorker
from edgefleet.cloud.node import CloudNode
from edgefleet.cloud.store import open_store
from edgefleet.protocol.errors import ConfigError


@pytest.mark.parametrize("mode", ["process", "thread"])
def test_both_modes_store_once_and_commit(mosquitto: MosquittoBroker, tmp_path: Path, mode) -> None:
    fleet = unique_fleet()
    store = open_store(sqlite_url(tmp_path))
    try:
        with running_ingest(mosquitto.url, store, fleet, mode=mode) as (worker,):
            assert (worker.stage_pid is None) == (mode == "thread")
            assert worker.stage_pid != os.getpid()
            dev = TestDevice(mosquitto.host, mosquitto.port, f"m-{mode}", fleet)
            seqs = dev.send_readings(30)
            dev.replay_all()
            assert dev.wait_outbox_empty()
            dev.close()
        assert store.record_keys("readings", dev.device_id) == [(dev.boot_id, s) for s in seqs]
        assert worker.stats.inserted == 30
        assert worker.stats.duplicates == 30
    finally:
        store.close()


@pytest.mark.slow
def test_sigkill_of_the_stage_process_loses_nothing(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    fleet = unique_fleet()
    store = open_store(sqlite_url(tmp_path))
    devs = [TestDevice(mosquitto.host, mosquitto.port, f"x{i}", fleet) for i in range(2)]
    sent: dict[str, list[int]] = {d.device_id: [] for d in devs}
    stop = threading.Event()

    def produce(d: TestDevice) -> None:
        while not stop.is_set() and len(sent[d.device_id]) < 2000:
            sent[d.device_id] += d.send_readings(10, wait=False)
            time.sleep(0.002)

    threads = [threading.Thread(target=produce, args=(d,)) for d in devs]
    try:
        with running_ingest(mosquitto.url, store, fleet) as (worker,):
            for t in threads:
                t.start()
            assert devs[0].wait(lambda: len(devs[0].commits) >= 3, 20)
            victim = worker.stage_pid
            assert victim is not None
            # PUBACKed, handed to the stage, not committed: exactly what a crash must not lose.
            os.kill(victim, signal.SIGKILL)
            assert devs[0].wait(lambda: worker.stats.stage_restarts >= 1, 30)
            assert worker.stage_pid not in (None, victim)
            stop.set()
            for t in threads:
                t.join()
            deadline = time.monotonic() + 60
            while any(d.outbox for d in devs):
                assert time.monotonic() < deadline, {d.device_id: len(d.outbox) for d in devs}
                for d in devs:
                    if d.outbox and not d.wait_outbox_empty(1.0):
                        d.resend_unacked()
        for d in devs:
            keys = store.record_keys("readings", d.device_id)
            assert keys == [(d.boot_id, s) for s in sorted(sent[d.device_id])]
    finally:
        stop.set()
        for d in devs:
            d.close()
        store.close()


def test_stage_process_that_cannot_open_the_store_is_an_error(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    url = sqlite_url(tmp_path)
    store = open_store(url)
    store.close()
    db = Path(url.removeprefix("sqlite:///"))
    db.unlink()
    db.mkdir()  # a directory where the database file should be
    settings = IngestSettings(broker_url=mosquitto.url, fleet=unique_fleet())
    worker = IngestWorker(settings, store, CloudNode())
    with pytest.raises(StoreError) as err:
        worker.start()
    assert err.value.reason == "ingest-not-ready"
    assert "did not start" in str(err.value)


def test_unknown_worker_mode_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="worker mode"):
        IngestSettings(broker_url="mqtt://127.0.0.1:1", mode="fork")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="--worker-mode"):
        CloudConfig(workdir=tmp_path, worker_mode="fork")  # type: ignore[arg-type]
