"""`cloud run --mqtt-version`: the cloud as its own process against an MQTT 3.1.1 broker."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.cloud_devices import TestDevice
from support.cloud_ingest import sqlite_url, unique_fleet
from typer.testing import CliRunner

from edgefleet.cloud.broker import EmbeddedBroker
from edgefleet.cloud.cli import app
from edgefleet.cloud.launcher import CloudProcess
from edgefleet.cloud.store import open_store
from edgefleet.protocol.errors import ConfigError


@pytest.mark.slow
def test_a_cloud_process_ingests_from_the_embedded_broker(
    embedded_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    fleet = unique_fleet()
    db = sqlite_url(tmp_path)
    cloud = CloudProcess(
        tmp_path / "cloud",
        broker_url=embedded_broker.url,
        db_url=db,
        fleet=fleet,
        mqtt_version="3.1.1",
    ).start()
    dev = TestDevice(embedded_broker.host, embedded_broker.port, "amqtt-1", fleet)
    try:
        assert "--mqtt-version" in cloud.args
        seqs = dev.send_readings(5)
        # A commit comes back only once the child stored them: ingest speaks 3.1.1 to amqtt.
        assert dev.wait_outbox_empty(30), dev.outbox
    finally:
        dev.close()
        cloud.stop()
    store = open_store(db)
    try:
        assert store.record_keys("readings", "amqtt-1") == [(dev.boot_id, s) for s in seqs]
    finally:
        store.close()


def test_a_bad_mqtt_version_is_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["run", "--workdir", str(tmp_path), "--http", "127.0.0.1:0", "--mqtt-version", "4"]
    )
    assert isinstance(result.exception, ConfigError)
    assert "--mqtt-version '4' is not 5 or 3.1.1" in str(result.exception)
    assert not (tmp_path / "edgefleet.db").exists()  # refused before anything started


def test_the_launcher_passes_the_version_only_when_given(tmp_path: Path) -> None:
    assert "--mqtt-version" not in CloudProcess(tmp_path).args
    args = CloudProcess(tmp_path, mqtt_version="5").args
    assert args[args.index("--mqtt-version") + 1] == "5"
