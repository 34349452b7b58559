"""A hostile device cannot stop ingest or hurt other devices: it is quarantined or throttled."""

from __future__ import annotations

import json
import sqlite3
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


@pytest.fixture
def any_store(request: pytest.FixtureRequest, tmp_path: Path):
    """The store the test's ``backend`` parameter names."""
    backend = request.node.callspec.params["backend"]
    url = sqlite_url(tmp_path) if backend == "sqlite" else request.getfixturevalue("pg_url")
    s = open_store(url)
    yield s
    s.close()


def _refuse_poison_events(url: str) -> None:
    """A real rule in the database that refuses one value, as an engine refuses what it
    cannot hold; which value that is differs per engine, so the test names its own."""
    if url.startswith("sqlite"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
            db.execute(
                "CREATE TRIGGER refuse_poison BEFORE INSERT ON events "
                "WHEN NEW.message = 'poison' BEGIN SELECT RAISE(ABORT, 'poison refused'); END"
            )
        return
    import psycopg

    with psycopg.connect(url, autocommit=True) as db:
        db.execute(
            "CREATE FUNCTION refuse_poison() RETURNS trigger AS $$ BEGIN "
            "IF NEW.message = 'poison' THEN "
            "RAISE EXCEPTION 'poison refused' USING ERRCODE = '22023'; END IF; "
            "RETURN NEW; END $$ LANGUAGE plpgsql"
        )
        db.execute(
            "CREATE TRIGGER refuse_poison BEFORE INSERT ON events "
            "FOR EACH ROW EXECUTE FUNCTION refuse_poison()"
        )


@pytest.mark.parametrize(
    ("backend", "mode"),
    [
        ("sqlite", "process"),
        ("sqlite", "thread"),
        pytest.param("postgres", "process", marks=pytest.mark.postgres),
    ],
)
def test_value_the_store_refuses_quarantines_only_its_message(
    mosquitto: MosquittoBroker, any_store, backend: str, mode: str
) -> None:
    _refuse_poison_events(any_store.url)
    fleet = unique_fleet()
    postgres = backend == "postgres"
    # One slow batch: the refused messages share a transaction with good ones.
    with running_ingest(mosquitto.url, any_store, fleet, mode=mode, batch_max_delay_s=0.5) as (
        worker,
    ):
        good = TestDevice(mosquitto.host, mosquitto.port, "good", fleet)
        evil = TestDevice(mosquitto.host, mosquitto.port, "evil", fleet)
        fine = [evil.send_event("note", "fine")]
        poison = evil.send_event("note", "poison")
        nul = evil.send_event("note", "a\x00b")  # PostgreSQL text cannot hold NUL
        huge = {"schema": "health/1", "device_id": "evil", "boot_id": evil.boot_id,
                "seq": 99, "sent_at": 1.0, "uptime_s": 1.0, "throttled": 2**64 - 1}  # fmt: skip
        evil.publish_raw(topics.telemetry(fleet, "evil", "health"), json.dumps(huge).encode())
        seqs = good.send_readings(5) + good.send_readings(5)
        fine.append(evil.send_event("note", "fine"))
        assert good.wait_outbox_empty(30), "a good device's records must commit"
        refused = 2 if postgres else 1
        assert evil.wait(lambda: worker.stats.by_reason.get("store-refused", 0) >= refused, 30)
        assert evil.wait(lambda: set(fine) <= evil.committed, 30)
        good.close()
        evil.close()
        assert worker.stats.by_reason.get("invalid") == 1  # the 2**64 - 1, by the schema
    assert any_store.record_keys("readings", "good") == [(good.boot_id, s) for s in seqs]
    stored = {seq for _boot, seq in any_store.record_keys("events", "evil")}
    assert poison not in stored
    assert poison not in evil.committed, "a refused message is never acked"
    assert (nul in stored) is not postgres
    rows = any_store.quarantined(reason="store-refused")
    assert len(rows) == refused
    assert {q.device_id for q in rows} == {"evil"}
    assert any("poison refused" in q.detail for q in rows)
    if postgres:
        assert any("NUL" in q.detail for q in rows)
    assert any_store.count("health") == 0


def test_bad_topics_are_throttled_per_fleet(mosquitto: MosquittoBroker, store) -> None:
    fleet = unique_fleet()
    with running_ingest(mosquitto.url, store, fleet, throttle_rate=5.0, throttle_burst=5.0) as (
        worker,
    ):
        good = TestDevice(mosquitto.host, mosquitto.port, "calm", fleet)
        evil = TestDevice(mosquitto.host, mosquitto.port, "evil", fleet)
        for i in range(100):
            evil.publish_raw(f"edgefleet/v1/{fleet}/_bad{i}/status", b"{}", wait=i == 99)
        seqs = good.send_readings(3)
        assert good.wait_outbox_empty()
        assert evil.wait(lambda: worker.stats.messages >= 101)
        assert evil.wait(lambda: worker.stats.throttled + worker.stats.quarantined >= 100)
        good.close()
        evil.close()
    bad = store.quarantined(reason="bad-topic")
    assert 5 <= len(bad) < 50, "past the burst, a fleet's bad topics are dropped"
    assert store.quarantined(reason="throttled")
    assert store.record_keys("readings", "calm") == [(good.boot_id, s) for s in seqs]
