"""Device records, statuses and acks are bound to the device by its record key.

Real Mosquitto without ACLs, a real ingest worker and store, a real agent with a record key
registered in the cloud. A forger who reads the device's boot id and takes its next seqs is
quarantined as ``impostor``; the genuine records are stored; forged statuses and acks change
nothing.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from support.cloud_ingest import running_ingest, sqlite_url, unique_fleet
from support.edge_agent import AgentThread, agent_toml, make_config

from edgefleet.cloud.errors import NotFound
from edgefleet.cloud.store import open_store
from edgefleet.cloud.store.base import RECORD_COLUMNS
from edgefleet.cloud.trust import RecordKeys
from edgefleet.protocol import codec, topics
from edgefleet.protocol.commandauth import seal_record, write_record_key
from edgefleet.protocol.messages import CommandAck, Health, Status

FORGED_UPTIME = 4242.0


def _wait(pred, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return bool(pred())


@pytest.fixture
def setup(mosquitto, tmp_path: Path):
    fleet = unique_fleet()
    device = f"mac-{os.getpid()}-{time.monotonic_ns() % 10**6}"
    store = open_store(sqlite_url(tmp_path))
    key_file = tmp_path / "record.key"
    RecordKeys(store).register(device, write_record_key(key_file))
    text = agent_toml(tmp_path / "d", mosquitto.port, device=device, record_key=key_file)
    cfg = make_config(text.replace('fleet = "default"', f'fleet = "{fleet}"'))
    forger = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"forger-{device}")
    forger.connect("127.0.0.1", mosquitto.port)
    forger.loop_start()
    with running_ingest(mosquitto.url, store, fleet):
        runner = AgentThread(cfg)
        runner.wait_ready()
        try:
            yield store, runner, forger, fleet, device
        finally:
            runner.stop()
            forger.publish(topics.status(fleet, device), b"", qos=1, retain=True).wait_for_publish(
                5
            )
            forger.loop_stop()
            forger.disconnect()
    store.close()


def _stored_seqs(store, device: str, boot: str) -> set[int]:
    out: set[int] = set()
    for table in RECORD_COLUMNS:
        out.update(s for b, s in store.record_keys(table, device) if b == boot)  # type: ignore[arg-type]
    return out


@pytest.mark.slow(seconds=20)
def test_pre_empted_seqs_are_quarantined_and_the_genuine_records_stored(setup) -> None:
    store, runner, forger, fleet, device = setup
    a = runner.agent
    boot = a.sequencer.boot_id
    assert _wait(lambda: len(_stored_seqs(store, device, boot)) > 5)
    ahead = max(_stored_seqs(store, device, boot)) + 20
    forged = range(ahead, ahead + 15)
    topic = topics.telemetry(fleet, device, "health")
    wrong_key = os.urandom(32)
    for seq in forged:
        h = Health(
            device_id=device, boot_id=boot, seq=seq, sent_at=time.time(), uptime_s=FORGED_UPTIME
        )
        payload = codec.encode(h)
        if seq % 2:  # half without a MAC, half with one by a key that is not the device's
            payload = seal_record(wrong_key, topic, payload, device)
        forger.publish(topic, payload, qos=1).wait_for_publish(5)
    assert _wait(lambda: set(forged) <= _stored_seqs(store, device, boot), 40)
    rows = store.records("health", device_id=device, limit=10_000)
    assert not [r for r in rows if r["uptime_s"] == FORGED_UPTIME]
    impostors = store.quarantined(device_id=device, reason="impostor")
    assert len(impostors) >= len(forged)
    # The genuine commit-acks (MAC'd with the record key) were accepted all along.
    assert a.uplink.counters.committed > 0
    assert not a.commands.guard.refused


@pytest.mark.slow(seconds=15)
def test_forged_status_and_cmd_ack_change_no_device_state(setup) -> None:
    store, _runner, forger, fleet, device = setup

    def online() -> bool:
        try:
            return store.device(device).online
        except NotFound:
            return False

    assert _wait(online)
    offline = Status(
        device_id=device, boot_id="forged", seq=0, sent_at=time.time() + 60, state="offline",
        reason="lwt",
    )  # fmt: skip
    forger.publish(
        topics.status(fleet, device), codec.encode(offline), qos=1, retain=True
    ).wait_for_publish(5)
    ack = CommandAck(
        device_id=device, boot_id="forged", seq=7, sent_at=time.time(), command_id="a-forged",
        command="assign-model", status="succeeded",
    )  # fmt: skip
    forger.publish(
        topics.command_ack(fleet, device, "assign-model"), codec.encode(ack), qos=1
    ).wait_for_publish(5)
    assert _wait(lambda: len(store.quarantined(device_id=device, reason="impostor")) >= 2)
    time.sleep(0.3)
    state = store.device(device)
    assert state.online
    assert state.boot_id != "forged"
    assert not [
        r for r in store.records("command_acks", device_id=device) if r["boot_id"] == "forged"
    ]
