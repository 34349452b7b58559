"""A small synchronous MQTT client for tests: subscribe, collect, publish, wait."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.protocol.codec import decode
from edgefleet.protocol.messages import Status


@dataclass(frozen=True)
class Received:
    """One message a probe saw."""

    topic: str
    payload: bytes
    retain: bool
    qos: int


class Probe:
    """A paho client on its own thread that records every message on its subscriptions."""

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str = "",
        *,
        v5: bool = False,
        tls: Callable[[mqtt.Client], None] | None = None,
    ) -> None:
        protocol = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol
        )
        self.messages: list[Received] = []
        self._cond = threading.Condition()
        self.client.on_message = self._on_message
        if tls is not None:
            tls(self.client)  # e.g. client.tls_set(...) before connecting
        self.client.connect(host, port)
        self.client.loop_start()

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(Received(msg.topic, msg.payload, bool(msg.retain), msg.qos))
            self._cond.notify_all()

    def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        """Subscribe and wait for the SUBACK."""
        done = threading.Event()
        self.client.on_subscribe = lambda *_a: done.set()
        self.client.subscribe(topic_filter, qos)
        assert done.wait(5), f"no SUBACK for {topic_filter}"

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Publish and wait until the broker has it."""
        self.client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(5)

    def wait_for(self, pred: Callable[[list[Received]], bool], timeout: float = 10) -> bool:
        """Wait until ``pred(messages)`` holds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not pred(self.messages):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def status_states(self) -> list[tuple[str, str | None]]:
        """(state, reason) of every status message seen, in arrival order."""
        out = []
        for m in self.messages:
            s = decode(m.payload)
            assert isinstance(s, Status), s
            out.append((s.state, s.reason))
        return out

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self.client.disconnect()
        self.client.loop_stop()
