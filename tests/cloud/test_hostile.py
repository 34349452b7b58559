"""A hostile device cannot stop ingest or hurt other devices: it is quarantined or throttled."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.cloud_devices import TestDevice
from support.cloud_ingest import running_ingest, sqlite_url, unique_fleet

from edgefleet.cloud.broker import MosquittoBroker
from edgefleet.cloud.store import open_store
from edgefleet.protocol import codec, topics
from edgefleet.protocol.codec import MAX_PAYLOAD_BYTES
from edgefleet.protocol.messages import Health


@pytest.fixture
def store(tmp_path: Path):
    s = open_store(sqlite_url(tmp_path))
    yield s
    s.close()


def test_bad_payloads_quarantined_with_reasons(mosquitto: MosquittoBroker, store) -> None:
    fleet = unique_fleet()
    with running_ingest(mosquitto.url, store, fleet) as (worker,):
        good = TestDevice(mosquitto.host, mosquitto.port, "good", fleet)
        evil = TestDevice(mosquitto.host, mosquitto.port, "evil", fleet)
        health = topics.telemetry(fleet, "evil", "health")
        evil.publish_raw(health, b"\x00\x01garbage")
        evil.publish_raw(health, b"{not json")
        evil.publish_raw(health, b"{" + b" " * (MAX_PAYLOAD_BYTES + 10) + b"}")
        evil.publish_raw(health, json.dumps({"schema": "health/9"}).encode())
        wrong = {"schema": "health/1", "device_id": "evil", "boot_id": "b", "seq": -1, "sent_at": 1}
        evil.publish_raw(health, json.dumps(wrong).encode())
        # A valid message of another device, on evil's... and on good's topic from evil.
        impostor = Health(device_id="evil", boot_id="b", seq=1, sent_at=1.0, uptime_s=1.0)
        evil.publish_raw(topics.telemetry(fleet, "good", "health"), codec.encode(impostor))
        # A valid message on a topic where it does not belong (health on an event topic).
        evil.publish_raw(topics.event(fleet, "evil", "boot"), codec.encode(impostor))
        evil.publish_raw(f"edgefleet/v1/{fleet}/_bad/status", b"{}")
        seqs = good.send_readings(5)
        assert good.wait_outbox_empty()
        assert evil.wait(lambda: worker.stats.quarantined >= 8)
        good.close()
        evil.close()
    reasons = sorted(q.reason for q in store.quarantined())
    assert reasons == sorted(
        [
            "undecodable",
            "undecodable",
            "too-large",
            "unknown-schema",
            "invalid",
            "impostor",
            "bad-topic",
            "bad-topic",
        ]
    )
    big = store.quarantined(reason="too-large")[0]
    assert big.payload_size > MAX_PAYLOAD_BYTES
    assert len(big.payload_excerpt) == 256
    assert big.device_id == "evil"
    imp = store.quarantined(reason="impostor")[0]
    assert imp.topic.endswith("/good/telemetry/health")
    # The good device was stored; nothing of the evil one was, and the impostor did not
    # make "good" look like it sent health.
    assert store.record_keys("readings", "good") == [(good.boot_id, s) for s in seqs]
    assert store.count("health") == 0


def test_flooding_device_throttled_others_unaffected(mosquitto: MosquittoBroker, store) -> None:
    fleet = unique_fleet()
    with running_ingest(mosquitto.url, store, fleet, throttle_rate=20.0, throttle_burst=20.0) as (
        worker,
    ):
        good = TestDevice(mosquitto.host, mosquitto.port, "calm", fleet)
        flood = TestDevice(mosquitto.host, mosquitto.port, "flood", fleet)
        for _ in range(300):
            flood.send_readings(1, wait=False)
        good_seqs = [s for _ in range(5) for s in good.send_readings(2)]
        assert good.wait_outbox_empty(), "the calm device must be committed despite the flood"
        assert flood.wait(lambda: worker.stats.throttled > 0)
        # Throttled records were not committed: the flooder keeps them and resends later.
        assert flood.wait(lambda: worker.stats.messages >= 305)
        stored = store.record_keys("readings", "flood")
        assert len(stored) < 300
        assert flood.wait(lambda: len(flood.outbox) == 300 - len(stored))
        good.close()
        flood.close()
    assert store.record_keys("readings", "calm") == [(good.boot_id, s) for s in good_seqs]
    throttled = store.quarantined(reason="throttled")
    assert throttled
    assert {q.device_id for q in throttled} == {"flood"}
