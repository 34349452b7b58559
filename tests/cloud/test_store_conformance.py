"""One conformance suite every TelemetryStore backend must pass: SQLite and PostgreSQL."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from edgefleet.cloud.errors import Conflict, NotFound, SchemaTooNew, StoreError, StoreURLError
from edgefleet.cloud.store import open_store
from edgefleet.cloud.store.base import (
    AckUpdate,
    Assignment,
    AssignmentTarget,
    DeviceUpdate,
    IngestBatch,
    ModelVersion,
    QuarantineEntry,
    StatusUpdate,
    TelemetryStore,
)
from edgefleet.cloud.store.migrations import LATEST
from edgefleet.protocol.messages import DeviceProfile


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    s = open_store(url)
    yield s
    s.close()


def _readings(device: str, boot: str, seqs: list[int], now: float) -> list[tuple]:
    return [(device, boot, s, now, now + s, "accel", '["x"]', f"[{s}]") for s in seqs]


def _batch(device: str, boot: str, seqs: list[int], now: float | None = None) -> IngestBatch:
    now = now or time.time()
    b = IngestBatch()
    b.records["readings"] = _readings(device, boot, seqs, now)
    b.devices[device] = DeviceUpdate(device, "f1", now)
    return b


def test_migrate_is_idempotent_and_versioned(store: TelemetryStore) -> None:
    assert store.schema_version() == LATEST
    assert store.migrate() == LATEST


def test_duplicates_skipped_not_errors(store: TelemetryStore) -> None:
    r1 = store.write_batch(_batch("d1", "b1", [0, 1, 2]))
    assert r1.inserted == {"readings": 3}
    assert r1.duplicates == 0
    r2 = store.write_batch(_batch("d1", "b1", [1, 2, 3, 3]))
    assert r2.inserted == {"readings": 1}
    assert r2.duplicates == 3
    assert store.record_keys("readings", "d1") == [("b1", 0), ("b1", 1), ("b1", 2), ("b1", 3)]
    # Same seqs of another boot or another device are other records.
    store.write_batch(_batch("d1", "b2", [0]))
    store.write_batch(_batch("d2", "b1", [0]))
    assert store.count("readings") == 6


def test_batch_is_one_transaction(store: TelemetryStore) -> None:
    bad = _batch("d1", "b1", [0, 1])
    bad.records["readings"].append(("d1", "b1", None, 0.0, 0.0, "s", "[]", "[]"))  # NOT NULL seq
    with pytest.raises(StoreError):
        store.write_batch(bad)
    assert store.count("readings") == 0
    assert store.devices() == []


def test_device_state_from_status_and_health(store: TelemetryStore) -> None:
    now = time.time()
    b = _batch("d1", "b1", [0], now)
    b.devices["d1"].status = StatusUpdate(True, "start", "b1", "0.1.0", "kws", "1.0.0")
    b.devices["d1"].health = {"cpu_percent": 50.0, "outbox_depth": 7, "outbox_drops": 2}
    b.devices["d1"].health_t = now
    store.write_batch(b)
    d = store.device("d1")
    assert (d.online, d.agent_version, d.model, d.model_version) == (True, "0.1.0", "kws", "1.0.0")
    assert (d.cpu_percent, d.outbox_depth, d.outbox_drops) == (50.0, 7, 2)
    # An older health sample does not overwrite a newer one; LWT marks it offline.
    b2 = _batch("d1", "b1", [1], now + 1)
    b2.devices["d1"].health = {"cpu_percent": 99.0}
    b2.devices["d1"].health_t = now - 10
    b2.devices["d1"].status = StatusUpdate(False, "lwt", "b1", "", None, None)
    store.write_batch(b2)
    d = store.device("d1")
    assert d.cpu_percent == 50.0
    assert (d.online, d.status_reason, d.model) == (False, "lwt", "kws")
    assert d.last_seen == pytest.approx(now + 1)
    assert [x.device_id for x in store.devices(online=False)] == ["d1"]
    assert store.devices(online=True) == []


def _status(store: TelemetryStore, online: bool, reason: str, boot: str, sent_at: float) -> None:
    b = IngestBatch()
    b.devices["d1"] = DeviceUpdate("d1", "f1", time.time())
    b.devices["d1"].status = StatusUpdate(online, reason, boot, "", None, None, sent_at)
    store.write_batch(b)


def test_status_of_an_old_boot_never_overrides_a_newer_one(store: TelemetryStore) -> None:
    def state() -> tuple[bool, str | None, str | None]:
        d = store.device("d1")
        return d.online, d.status_reason, d.boot_id

    _status(store, True, "start", "boot2", 2000.0)
    # Workers sharing a subscription can store boot1's LWT after boot2's birth.
    _status(store, False, "lwt", "boot1", 1000.0)
    assert state() == (True, "start", "boot2")
    _status(store, True, "start", "boot1", 1001.0)  # a redelivered old birth: also ignored
    assert state() == (True, "start", "boot2")
    # Within one boot arrival order wins: the will was built before the birth it ends.
    _status(store, False, "lwt", "boot2", 1999.0)
    assert state() == (False, "lwt", "boot2")
    assert store.device("d1").status_at == 1999.0
    # A boot whose clock starts behind (no real-time clock) still comes back online.
    _status(store, True, "start", "boot3", 500.0)
    assert state() == (True, "start", "boot3")
    _status(store, False, "shutdown", "boot4", 600.0)  # a newer boot's offline applies
    assert state() == (False, "shutdown", "boot4")


def test_birth_profile_is_kept_with_the_model_it_describes(store: TelemetryStore) -> None:
    profile = DeviceProfile(
        channels=["ax", "ay", "az"], sample_rate_hz=400.0, runtimes=["litert"], task="anomaly",
        labels=[],
    )  # fmt: skip
    b = IngestBatch()
    b.devices["d1"] = DeviceUpdate("d1", "f1", time.time())
    b.devices["d1"].status = StatusUpdate(True, "start", "b1", "1", "vib", "1.0.0", 10.0, profile)
    store.write_batch(b)
    want = {
        "channels": ["ax", "ay", "az"], "sample_rate_hz": 400.0, "runtimes": ["litert"],
        "task": "anomaly", "labels": [], "model": "vib@1.0.0",
    }  # fmt: skip
    assert store.device("d1").profile == want
    # A will without a profile keeps what the birth said ...
    _status(store, False, "lwt", "b1", 11.0)
    assert store.device("d1").profile == want
    # ... a birth without one (the agent was downgraded) says the device reports none.
    _status(store, True, "start", "b2", 12.0)
    assert store.device("d1").profile is None


def test_forget_device_keeps_telemetry_unless_purged(store: TelemetryStore) -> None:
    for device in ("d1", "d2"):
        b = _batch(device, "b1", [0, 1])
        b.records["events"] = [(device, "b1", 2, 1.0, 1.0, "boot", "info", "", "{}")]
        b.quarantine.append(QuarantineEntry(1.0, "undecodable", "t", device, "x", 1, b"!"))
        store.write_batch(b)
    assert store.forget_device("d1") == {"devices": 1}
    with pytest.raises(NotFound):
        store.device("d1")
    assert store.record_keys("readings", "d1") == [("b1", 0), ("b1", 1)]
    deleted = store.forget_device("d2", purge=True)
    assert (deleted["devices"], deleted["readings"], deleted["events"]) == (1, 2, 1)
    assert deleted["quarantine"] == 1
    assert store.record_keys("readings", "d2") == []
    assert store.record_keys("readings", "d1") == [("b1", 0), ("b1", 1)]  # d1's history stays
    assert [q.device_id for q in store.quarantined()] == ["d1"]
    with pytest.raises(NotFound):
        store.forget_device("d2")


def test_delete_model_refused_while_served_or_in_flight(store: TelemetryStore) -> None:
    store.put_model(_model())
    store.put_model(_model("1.1.0", "c" * 64))
    b = IngestBatch()
    b.devices["d1"] = DeviceUpdate("d1", "f1", time.time())
    b.devices["d1"].status = StatusUpdate(True, "start", "b1", "", "kws", "1.0.0", 1.0)
    store.write_batch(b)
    now = time.time()
    store.create_assignment(
        Assignment(
            id="a-9", fleet="f1", model="kws", version="1.1.0", sha256="c" * 64, size=10,
            url="u", selector_kind="device", selector=("d2",), created_at=now,
            targets=(AssignmentTarget("d2", "pending", None, None, now),),
        )
    )  # fmt: skip
    with pytest.raises(Conflict, match="served by d1") as served:
        store.delete_model("kws", "1.0.0")
    assert served.value.reason == "model-in-use"
    with pytest.raises(Conflict, match=r"in flight to d2 \(a-9\)"):
        store.delete_model("kws", "1.1.0")
    # Once the device answered, the version is no longer in flight and may go.
    store.set_target_state("a-9", "d2", "refused", reason="incompatible", at=now)
    assert store.delete_model("kws", "1.1.0").version == "1.1.0"
    assert [m.version for m in store.models("kws")] == ["1.0.0"]
    assert store.assignment("a-9").targets[0].state == "refused"  # the history stays
    with pytest.raises(NotFound):
        store.delete_model("kws", "1.1.0")


def test_tags_and_filters(store: TelemetryStore) -> None:
    store.write_batch(_batch("d1", "b", [0]))
    store.write_batch(_batch("d2", "b", [0]))
    assert store.set_tags("d1", ["canary", "lab"]).tags == ("canary", "lab")
    assert [d.device_id for d in store.devices(tag="canary")] == ["d1"]
    assert [d.device_id for d in store.devices(fleet="f1")] == ["d1", "d2"]
    with pytest.raises(NotFound):
        store.set_tags("nope", ["x"])
    with pytest.raises(NotFound):
        store.device("nope")


def test_time_range_query(store: TelemetryStore) -> None:
    now = 1000.0
    store.write_batch(_batch("d1", "b", list(range(10)), now))
    rows = store.records("readings", device_id="d1", since=now + 3, until=now + 6)
    assert [r["seq"] for r in rows] == [5, 4, 3]
    assert rows[0]["samples"] == [5]
    assert len(store.records("readings", limit=2)) == 2


def test_quarantine_roundtrip(store: TelemetryStore) -> None:
    b = IngestBatch()
    b.quarantine.append(QuarantineEntry(1.0, "undecodable", "t/x", "d1", "bad", 3, b"\x00\xff!"))
    b.quarantine.append(QuarantineEntry(2.0, "too-large", "t/y", None, "big", 9, b"aaa"))
    store.write_batch(b)
    rows = store.quarantined()
    assert [q.reason for q in rows] == ["too-large", "undecodable"]
    assert rows[1].payload_excerpt == b"\x00\xff!"
    assert [q.reason for q in store.quarantined(device_id="d1")] == ["undecodable"]
    assert [q.reason for q in store.quarantined(reason="too-large")] == ["too-large"]


def test_retention_prunes_raw_only(store: TelemetryStore) -> None:
    old, new = 100.0, time.time()
    store.write_batch(_batch("d1", "b", [0, 1], old))
    store.write_batch(_batch("d1", "b", [2], new))
    ev = IngestBatch()
    ev.records["events"] = [("d1", "b", 3, old, old, "boot", "info", "", "{}")]
    store.write_batch(ev)
    assert store.prune(new - 1) == {"health": 0, "inference": 0, "readings": 2, "drift": 0}
    assert store.record_keys("readings", "d1") == [("b", 2)]
    assert store.count("events") == 1


def _model(version: str = "1.0.0", sha: str = "a" * 64) -> ModelVersion:
    return ModelVersion(
        name="kws", version=version, sha256=sha, size=10, runtime="onnx", key_id="k",
        description="", metrics={"acc": 0.9}, lineage={"parent": None},
        manifest={"name": "kws"}, created_at=1.0, uploaded_at=time.time(),
    )  # fmt: skip


def test_models(store: TelemetryStore) -> None:
    m = store.put_model(_model())
    assert m.metrics == {"acc": 0.9}
    assert store.put_model(_model()) == m  # same bytes: idempotent
    with pytest.raises(Conflict):
        store.put_model(_model(sha="b" * 64))
    store.put_model(_model("1.1.0", "c" * 64))
    assert {x.version for x in store.models("kws")} == {"1.0.0", "1.1.0"}
    with pytest.raises(NotFound):
        store.model("kws", "9.9.9")


def test_assignment_targets_move_forward_only(store: TelemetryStore) -> None:
    store.put_model(_model())
    now = time.time()
    a = Assignment(
        id="a-1", fleet="f1", model="kws", version="1.0.0", sha256="a" * 64, size=10, url="u",
        selector_kind="list", selector=("d1", "d2"), created_at=now, rollout_id="r1", wave=1,
        targets=(AssignmentTarget("d1", "pending", None, None, now),
                 AssignmentTarget("d2", "pending", None, None, now)),
    )  # fmt: skip
    assert store.create_assignment(a).counts() == {"pending": 2}
    b = IngestBatch()
    b.acks.append(AckUpdate("a-1", "d1", "received", None, None, now))
    b.acks.append(AckUpdate("a-1", "d2", "refused", "bad-signature", "no", now))
    store.write_batch(b)
    store.set_target_state("a-1", "d1", "sent", at=now)  # the ack overtook "sent"
    b2 = IngestBatch()
    b2.acks.append(AckUpdate("a-1", "d1", "succeeded", None, None, now))
    b2.acks.append(AckUpdate("a-1", "d2", "received", None, None, now))
    store.write_batch(b2)
    got = store.assignment("a-1")
    states = {t.device_id: (t.state, t.reason) for t in got.targets}
    assert states == {"d1": ("succeeded", None), "d2": ("refused", "bad-signature")}
    assert (got.rollout_id, got.wave, got.selector) == ("r1", 1, ("d1", "d2"))
    assert [x.id for x in store.assignments()] == ["a-1"]


def test_bad_urls() -> None:
    with pytest.raises(StoreURLError):
        open_store("mysql://x")
    with pytest.raises(StoreURLError):
        open_store("sqlite:///")


def test_schema_too_new_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    s = open_store(url)
    with s._transaction() as cur:  # type: ignore[attr-defined]
        cur.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)", (LATEST + 1, "future", 0.0))
    s.close()
    with pytest.raises(SchemaTooNew):
        open_store(url)
