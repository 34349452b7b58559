"""The real-parts harness: Mosquitto, the embedded broker, PostgreSQL, and mosquitto_sub."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable

import pytest
from support.mqtt import Probe

from edgefleet.cloud.broker import EmbeddedBroker, MosquittoBroker
from edgefleet.protocol import codec, topics
from edgefleet.protocol.examples import examples


def test_mosquitto_sub_shows_readable_json_for_every_message_type(
    mosquitto_factory: Callable[..., MosquittoBroker],
) -> None:
    # A private broker: other tests on the session broker publish under edgefleet/v1/ too.
    mosquitto = mosquitto_factory()
    if shutil.which("mosquitto_sub") is None:
        pytest.fail("mosquitto_sub is missing: apt-get install -y mosquitto-clients")
    sent = examples(device="sub-check")
    probe = Probe(mosquitto.host, mosquitto.port)
    # The status comes first and retained: once the reader prints it, its subscription is live.
    first_topic, first = sent[0]
    probe.publish(first_topic, codec.encode(first), retain=True)
    sub = subprocess.Popen(
        [
            "mosquitto_sub",
            "-h",
            mosquitto.host,
            "-p",
            str(mosquitto.port),
            "-q",
            "1",
            "-v",
            "-t",
            "edgefleet/v1/#",
            "-C",
            str(len(sent)),
            "-W",
            "20",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert sub.stdout is not None
        head = sub.stdout.readline()
        for topic, message in sent[1:]:
            probe.publish(topic, codec.encode(message))
        rest, stderr = sub.communicate(timeout=30)
        stdout = head + rest
    finally:
        probe.publish(first_topic, b"", retain=True)  # clear the retained status again
        probe.close()
        if sub.poll() is None:
            sub.kill()
    lines = stdout.strip().splitlines()
    assert len(lines) == len(sent), stderr
    for line, (topic, message) in zip(lines, sent, strict=True):
        got_topic, payload = line.split(" ", 1)
        assert got_topic == topic
        doc = json.loads(payload)  # readable JSON, as any MQTT dashboard needs
        assert doc["schema"] == message.__struct_config__.tag
        codec.check_topic(topics.parse(got_topic), codec.decode(payload.encode()))


def test_a_killed_mosquitto_restarts_on_the_same_port(
    mosquitto_factory: Callable[..., MosquittoBroker],
) -> None:
    broker = mosquitto_factory()
    port, pid = broker.port, broker.pid
    broker.kill()
    assert not broker.running
    broker.restart()
    assert broker.running
    assert (broker.port, broker.pid != pid) == (port, True)
    probe = Probe(broker.host, broker.port)
    probe.subscribe("x/#")
    probe.publish("x/y", b"after restart")
    assert probe.wait_for(lambda msgs: any(m.payload == b"after restart" for m in msgs))
    probe.close()


def test_retained_messages_survive_a_clean_restart(
    mosquitto_factory: Callable[..., MosquittoBroker],
) -> None:
    broker = mosquitto_factory()
    probe = Probe(broker.host, broker.port)
    probe.publish("edgefleet/v1/f/d/status", b'{"state":"online"}', retain=True)
    probe.close()
    broker.restart()  # SIGTERM: Mosquitto writes its persistence file
    probe = Probe(broker.host, broker.port)
    probe.subscribe("edgefleet/v1/#")
    assert probe.wait_for(lambda msgs: any(m.retain for m in msgs))
    probe.close()


def test_embedded_broker_relays_qos1(embedded_broker: EmbeddedBroker) -> None:
    probe = Probe(embedded_broker.host, embedded_broker.port)
    probe.subscribe("edgefleet/v1/#")
    topic, message = examples()[1]
    probe.publish(topic, codec.encode(message))
    assert probe.wait_for(lambda msgs: len(msgs) == 1)
    assert codec.decode(probe.messages[0].payload) == message
    probe.close()


@pytest.mark.postgres
def test_pg_url_is_a_fresh_database(pg_url: str) -> None:
    psycopg = pytest.importorskip("psycopg")
    with psycopg.connect(pg_url) as conn:
        tables = conn.execute(
            "select count(*) from information_schema.tables where table_schema='public'"
        ).fetchone()
        assert tables == (0,)
        conn.execute("create table t (x int primary key)")
