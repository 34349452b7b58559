"""The documented device ACL, loaded into a real private Mosquitto (docs/protocol.md, "ACL").

Each client connects over MQTT 5 with a username (the device id, as the broker would
authenticate it) and publishes at QoS 1, so the broker answers every publish with a PUBACK
whose reason code says whether the ACL let it through; a subscriber with the cloud's rights
then shows what was actually delivered.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from edgefleet.cloud.broker import MosquittoBroker
from edgefleet.protocol import topics

CLOUD_ACL = ["user cloud", "topic read edgefleet/v1/#", "topic write edgefleet/v1/+/+/cmd/+"]


class Client:
    """A paho MQTT 5 client with a username that records PUBACK codes and messages."""

    def __init__(self, broker: MosquittoBroker, username: str, client_id: str) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        self.client.username_pw_set(username)
        self.acks: dict[int, ReasonCode] = {}
        self.received: list[str] = []
        self._cond = threading.Condition()
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        connected = threading.Event()
        self.client.on_connect = lambda *_a: connected.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert connected.wait(30), f"{username} could not connect"

    def _on_publish(self, _c: object, _u: object, mid: int, rc: ReasonCode, _p: object) -> None:
        with self._cond:
            self.acks[mid] = rc
            self._cond.notify_all()

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.received.append(msg.topic)
            self._cond.notify_all()

    def _wait(self, pred: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 30
        with self._cond:
            while not pred():
                left = deadline - time.monotonic()
                assert left > 0, f"timed out waiting for {what}"
                self._cond.wait(left)

    def publish(self, topic: str) -> bool:
        """Publish at QoS 1; True if the broker accepted it, False if the ACL refused it."""
        mid = self.client.publish(topic, b"{}", qos=1).mid
        self._wait(lambda: mid in self.acks, f"the PUBACK of {topic}")
        rc = self.acks[mid]
        # Below 0x80 is success (0x10: accepted, no subscriber); 0x87 is "Not authorized".
        assert rc.value < 0x80 or rc.value == 0x87, f"unexpected PUBACK {rc} for {topic}"
        return rc.value < 0x80

    def subscribe(self, topic_filter: str) -> None:
        """Subscribe and wait for the SUBACK."""
        done = threading.Event()
        self.client.on_subscribe = lambda *_a: done.set()
        self.client.subscribe(topic_filter, qos=1)
        assert done.wait(30), f"no SUBACK for {topic_filter}"

    def wait_for(self, topic: str) -> None:
        """Wait until a message on ``topic`` has arrived."""
        self._wait(lambda: topic in self.received, f"a message on {topic}")

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def acl_broker(
    tmp_path: Path, mosquitto_factory: Callable[..., MosquittoBroker]
) -> Callable[[list[str]], MosquittoBroker]:
    def start(lines: list[str]) -> MosquittoBroker:
        acl = tmp_path / f"acl-{uuid.uuid4().hex[:6]}"
        acl.write_text("\n".join(lines) + "\n")
        return mosquitto_factory(extra_config=f"acl_file {acl}")

    return start


@pytest.fixture
def clients() -> Iterator[Callable[[MosquittoBroker, str, str], Client]]:
    made: list[Client] = []

    def make(broker: MosquittoBroker, username: str, client_id: str) -> Client:
        made.append(Client(broker, username, client_id))
        return made[-1]

    yield make
    for c in made:
        c.close()


def test_the_patterns_keep_a_device_to_its_own_device_id(
    acl_broker: Callable[[list[str]], MosquittoBroker],
    clients: Callable[[MosquittoBroker, str, str], Client],
) -> None:
    broker = acl_broker([*topics.DEVICE_ACL_PATTERNS, *CLOUD_ACL])
    cloud = clients(broker, "cloud", "cloud")
    cloud.subscribe("edgefleet/v1/#")
    d1 = clients(broker, "d1", "d1")
    # A client id of another device changes nothing: the ACL follows the authenticated user.
    posing = clients(broker, "d1", "d2")
    d2 = clients(broker, "d2", "d2-session")
    d2.subscribe(topics.device_command_filters("f1", "d2")[0])
    d1.subscribe("edgefleet/v1/f1/d2/cmd/+")

    own = [
        topics.status("f1", "d1"),
        topics.telemetry("f1", "d1", "health"),
        topics.event("f1", "d1", "model-swap"),
        topics.command_ack("f1", "d1", "assign-model"),
    ]
    for topic in own:
        assert d1.publish(topic), topic
    theirs = [
        topics.status("f1", "d2"),
        topics.telemetry("f1", "d2", "health"),
        topics.event("f1", "d2", "model-swap"),
        topics.command_ack("f1", "d2", "assign-model"),
        topics.command("f1", "d2", "assign-model"),  # a device never sends commands
        topics.command("f1", "_all", "set-config"),
    ]
    for topic in theirs:
        assert not d1.publish(topic), topic
        assert not posing.publish(topic), topic

    # The limitation docs/protocol.md states: the patterns cannot pin the fleet.
    assert d1.publish(topics.status("f2", "d1"))

    command = topics.command("f1", "d2", "set-config")
    assert cloud.publish(command)
    d2.wait_for(command)
    sentinel = topics.telemetry("f1", "d1", "sentinel")
    assert d1.publish(sentinel)
    cloud.wait_for(sentinel)  # every earlier publish has been routed by now
    assert set(cloud.received) & set(theirs) == set()
    assert command not in d1.received  # d1 may not read d2's commands


def test_device_acl_lines_also_pin_the_fleet(
    acl_broker: Callable[[list[str]], MosquittoBroker],
    clients: Callable[[MosquittoBroker, str, str], Client],
) -> None:
    broker = acl_broker(
        [*topics.device_acl("f1", "d1"), *topics.device_acl("f2", "d2"), *CLOUD_ACL]
    )
    d1 = clients(broker, "d1", "d1")
    assert d1.publish(topics.status("f1", "d1"))
    assert d1.publish(topics.telemetry("f1", "d1", "inference"))
    assert not d1.publish(topics.status("f2", "d1"))
    assert not d1.publish(topics.telemetry("f2", "d1", "inference"))
    assert not d1.publish(topics.status("f1", "d2"))
    assert not d1.publish(topics.status("f2", "d2"))
