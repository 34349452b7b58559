"""Publishes commands from the cloud to devices over its own MQTT connection."""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt

from edgefleet.cloud.commandsigner import CommandSigner
from edgefleet.cloud.errors import CloudError
from edgefleet.cloud.mqtt import BrokerAddress, MqttVersion, connect, make_client
from edgefleet.cloud.trust import RecordKeys
from edgefleet.protocol import codec, topics
from edgefleet.protocol.messages import Envelope


class CommandPublisher:
    """A paho client on its own network thread; ``publish`` returns once the broker has it.

    It is separate from the ingest workers so that API requests never wait behind a batch.
    """

    def __init__(
        self,
        broker_url: str,
        client_id: str,
        *,
        version: MqttVersion = "5",
        signer: CommandSigner | None = None,
        record_keys: RecordKeys | None = None,
    ) -> None:
        self._address = BrokerAddress.parse(broker_url)
        # Every command is signed by the cloud's command key; agents refuse unsigned ones.
        self.signer = signer
        # A device with a record key gets its commands MAC'd with it instead: it checks them
        # with the stdlib, and never loads `cryptography` (8 MB of RSS) for a command.
        self.record_keys = record_keys
        self._client, self._props = make_client(
            self._address, client_id, version=version, persistent=False
        )
        self._connected = threading.Event()
        self._client.on_connect = lambda *_a: self._connected.set()
        self._client.on_disconnect = lambda *_a: self._connected.clear()

    def start(self, timeout: float = 10.0) -> CommandPublisher:
        """Connect and start the network thread."""
        try:
            connect(self._client, self._address, self._props, persistent=False)
        except OSError as exc:
            raise CloudError(f"cannot reach the broker at {self._address.url}: {exc}") from None
        self._client.loop_start()
        if not self._connected.wait(timeout):
            raise CloudError(f"the broker at {self._address.url} did not accept the connection")
        return self

    def publish(self, topic: str, message: Envelope, timeout: float = 10.0) -> None:
        """Publish at QoS 1 and wait for the broker's PUBACK."""
        if self.signer is None:
            payload = codec.encode(message)
        else:
            payload = self.signer.sign(topic, message, mac_key=self._mac_key(topic))
        info = self._client.publish(topic, payload, qos=1)
        try:
            info.wait_for_publish(timeout)
        except (RuntimeError, ValueError) as exc:
            raise CloudError(f"could not publish to {topic}: {exc}") from None
        if info.rc != mqtt.MQTT_ERR_SUCCESS or not info.is_published():
            raise CloudError(f"the broker did not take the command on {topic} (rc {info.rc})")

    def _mac_key(self, topic: str) -> bytes | None:
        if self.record_keys is None:
            return None
        device = topics.parse(topic).device
        # A broadcast reaches devices with different keys: only the command key signs it.
        return None if device == topics.BROADCAST else self.record_keys.get(device)

    def stop(self) -> None:
        """Disconnect cleanly and stop the thread."""
        self._client.disconnect()
        self._client.loop_stop()
