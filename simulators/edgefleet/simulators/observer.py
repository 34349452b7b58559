"""A broker-side witness of births and wills: who went offline how (for the LWT invariant)."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.protocol import codec, topics
from edgefleet.protocol.errors import ProtocolError
from edgefleet.protocol.messages import Status


@dataclass(frozen=True, slots=True)
class StatusSeen:
    """One status message the observer received."""

    device_id: str
    boot_id: str
    state: str
    reason: str


class StatusObserver:
    """Subscribes to every device's status topic of a fleet and records what arrives.

    One paho client on its own network thread (it is a single client in the coordinating
    process, not one per device). It reconnects by itself across a broker outage.
    """

    def __init__(self, host: str, port: int, fleet: str, client_id: str = "sim-observer") -> None:
        self.fleet = fleet
        self.seen: list[StatusSeen] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False
        )
        self.client.reconnect_delay_set(1, 2)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(host, port, keepalive=10)
        self.client.loop_start()

    def wait_subscribed(self, timeout: float = 10.0) -> bool:
        """Wait for the first SUBACK."""
        return self._subscribed.wait(timeout)

    def _on_connect(self, client: mqtt.Client, *_args: object) -> None:
        client.subscribe(topics.uplink_filters(self.fleet)[0], qos=1)

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        try:
            status = codec.decode(msg.payload)
        except ProtocolError:
            return
        if isinstance(status, Status):
            with self._lock:
                self.seen.append(
                    StatusSeen(status.device_id, status.boot_id, status.state, status.reason or "")
                )

    def wills(self) -> set[tuple[str, str]]:
        """``(device_id, boot_id)`` of every will (LWT) seen."""
        with self._lock:
            return {(s.device_id, s.boot_id) for s in self.seen if s.reason == "lwt"}

    def online(self) -> dict[str, bool]:
        """The last state seen of every device."""
        with self._lock:
            out: dict[str, bool] = {}
            for s in self.seen:
                out[s.device_id] = s.state == "online"
            return out

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self.client.disconnect()
        self.client.loop_stop()
