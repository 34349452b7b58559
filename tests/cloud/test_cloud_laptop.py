"""The laptop path: a Cloud with no broker URL starts its own broker; the HTTP API over it."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import pytest
from support.cloud_auth import api
from support.cloud_devices import TestDevice

from edgefleet.cloud import app as cloud_app
from edgefleet.cloud.app import Cloud, CloudConfig, Retention
from edgefleet.cloud.broker import EmbeddedBroker, MosquittoBroker
from edgefleet.cloud.store.base import IngestBatch, QuarantineEntry
from edgefleet.cloud.store.migrations import LATEST
from edgefleet.protocol import topics


@pytest.mark.slow(seconds=20)
@pytest.mark.parametrize("broker", ["embedded", "mosquitto"])
def test_cloud_without_broker_url_ingests_and_serves_http(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broker: str
) -> None:
    if broker == "embedded":
        # A laptop without Mosquitto: the [broker] extra's amqtt takes over.
        monkeypatch.setattr(cloud_app, "mosquitto_available", lambda: False)
    config = CloudConfig(
        workdir=tmp_path / "cloud",
        http_port=0,
        dashboard=None,
        retention=Retention(raw_days=1.0, quarantine_days=1.0, every_s=0),
    )
    with Cloud(config) as cloud:
        kind = EmbeddedBroker if broker == "embedded" else MosquittoBroker
        assert isinstance(cloud.broker, kind)
        host, port = cloud.broker.host, cloud.broker.port
        dev = TestDevice(host, port, "lap-1", "f1")
        dev.birth()
        before = time.time()
        seqs = dev.send_readings(4)
        dev.publish_raw(topics.telemetry("f1", "lap-1", "health"), b"\xffnot a payload")
        assert dev.wait_outbox_empty(30)
        store = cloud.store
        assert store is not None
        assert dev.wait(lambda: store.count("quarantine") == 1, 15)
        with api(cloud, timeout=30) as http:
            assert http.get("/healthz").json() == {"ok": True, "schema": LATEST}
            fleet = http.get("/v1/fleet").json()
            assert (fleet["devices"], fleet["online"], fleet["offline"]) == (1, 1, 0)
            rows = http.get(
                "/v1/telemetry/readings", params={"device": "lap-1", "since": before - 1}
            ).json()
            assert [r["seq"] for r in rows] == sorted(seqs, reverse=True)  # newest first
            assert rows[0]["samples"] == [float(seqs[-1]), 1.0]
            past = http.get("/v1/telemetry/readings", params={"until": before - 1}).json()
            assert past == []
            assert http.get("/v1/telemetry/nope").status_code == 422
            (q,) = http.get("/v1/quarantine", params={"device": "lap-1"}).json()
            assert q["reason"] == "undecodable"
            assert base64.b64decode(q["payload_excerpt_b64"]) == b"\xffnot a payload"
            assert http.get("/v1/quarantine", params={"reason": "impostor"}).json() == []
        dev.close()

        # Retention: rows received two days ago go, today's stay, events are kept.
        old = time.time() - 2 * 86400
        aged = IngestBatch()
        aged.records["readings"] = [("lap-1", "old", 0, old, old, "accel", "[]", "[]")]
        aged.records["events"] = [("lap-1", "old", 1, old, old, "boot", "info", "", "{}")]
        aged.quarantine.append(QuarantineEntry(old, "invalid", "t", "lap-1", "d", 1, b"x"))
        store.write_batch(aged)
        pruned = cloud.prune()
        assert (pruned["readings"], pruned["quarantine"]) == (1, 1)
        assert [s for _b, s in store.record_keys("readings", "lap-1")] == seqs
        assert store.count("events") == 1
        assert [e.reason for e in store.quarantined()] == ["undecodable"]
