"""Home Assistant MQTT discovery (opt-in per fleet): retained configs under ``homeassistant/``.

Each device of an opted-in fleet appears in Home Assistant as one device with sensors that read
the device's OWN topics (inference, health, status): the cloud publishes only the discovery
configs, never per-message state, so Home Assistant costs ingest nothing. Availability follows
the device's retained status topic, which the broker overwrites with the LWT when a device dies.
Schema: https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery and the ``sensor`` and
``binary_sensor`` MQTT integration pages (``availability_topic`` + ``availability_template``).
"""

from __future__ import annotations

import json
import logging
import re
import threading
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import paho.mqtt.client as mqtt

from edgefleet.cloud.errors import CloudError
from edgefleet.cloud.mqtt import BrokerAddress, MqttVersion, connect, make_client
from edgefleet.cloud.store.base import DeviceState, TelemetryStore
from edgefleet.protocol import topics
from edgefleet.protocol.errors import ConfigError

log = logging.getLogger(__name__)
# Discovery topic levels may hold only these characters (HA docs, "Discovery topic").
_NODE_CHARS = re.compile(r"[^a-zA-Z0-9_-]")


@dataclass(frozen=True, slots=True)
class Sensor:
    """One entity: which device topic it reads and how to pull the value out of the JSON."""

    component: str
    object_id: str
    name: str
    stream: str  # "inference", "health" or "status"
    template: str
    extra: tuple[tuple[str, Any], ...] = ()


SENSORS: tuple[Sensor, ...] = (
    Sensor("sensor", "anomaly_score", "Anomaly score", "inference",
           "{{ value_json.records[-1].score }}",
           (("state_class", "measurement"), ("icon", "mdi:chart-bell-curve"))),
    Sensor("sensor", "last_class", "Last class", "inference",
           "{{ value_json.records[-1].label }}", (("icon", "mdi:tag"),)),
    Sensor("sensor", "latency", "Inference latency", "health",
           "{{ value_json.latency_ms_p50 }}",
           (("unit_of_measurement", "ms"), ("device_class", "duration"),
            ("state_class", "measurement"))),
    Sensor("sensor", "temperature", "Temperature", "health",
           "{{ value_json.temperature_c }}",
           (("unit_of_measurement", "°C"), ("device_class", "temperature"),
            ("state_class", "measurement"))),
    Sensor("sensor", "cpu", "CPU", "health", "{{ value_json.cpu_percent }}",
           (("unit_of_measurement", "%"), ("state_class", "measurement"),
            ("icon", "mdi:cpu-64-bit"))),
    Sensor("sensor", "outbox_depth", "Outbox depth", "health", "{{ value_json.outbox_depth }}",
           (("state_class", "measurement"), ("icon", "mdi:tray-full"))),
    # The online sensor has no availability of its own: offline must show "off", not "unavailable".
    Sensor("binary_sensor", "online", "Online", "status", "{{ value_json.state }}",
           (("payload_on", "online"), ("payload_off", "offline"),
            ("device_class", "connectivity"))),
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class HomeAssistantSettings:
    """Which fleets appear in Home Assistant, and under which discovery prefix."""

    fleets: tuple[str, ...]
    discovery_prefix: str = "homeassistant"
    # How often the store is read for new or changed devices.
    interval_s: float = 10.0

    def __post_init__(self) -> None:
        if not self.fleets:
            raise ConfigError("Home Assistant discovery is opt-in per fleet: name at least one")
        for f in self.fleets:
            topics.validate_id(f, "fleet id")
        if not self.discovery_prefix or any(c in self.discovery_prefix for c in "+#"):
            raise ConfigError(f"discovery prefix {self.discovery_prefix!r} is not a topic prefix")
        if self.interval_s <= 0:
            raise ConfigError("interval_s must be positive")


def _version() -> str:
    try:
        return metadata.version("edgefleet")
    except metadata.PackageNotFoundError:
        return "0"


def node_id(fleet: str, device: str) -> str:
    """The ``<node_id>`` topic level of a device (only ``[a-zA-Z0-9_-]``)."""
    return _NODE_CHARS.sub("_", f"edgefleet_{fleet}_{device}")


def discovery_configs(d: DeviceState, prefix: str = "homeassistant") -> dict[str, dict[str, Any]]:
    """Config topic -> JSON config of every entity of one device."""
    node = node_id(d.fleet, d.device_id)
    status = topics.status(d.fleet, d.device_id)
    source = {
        "inference": topics.telemetry(d.fleet, d.device_id, "inference"),
        "health": topics.telemetry(d.fleet, d.device_id, "health"),
        "status": status,
    }
    device = {
        "identifiers": [node],
        "name": d.device_id,
        "manufacturer": "edgefleet",
        "model": f"{d.model} {d.model_version}" if d.model else "edgefleet agent",
        "sw_version": d.agent_version or None,
        "suggested_area": d.fleet,
    }
    out: dict[str, dict[str, Any]] = {}
    for s in SENSORS:
        config: dict[str, Any] = {
            "name": s.name,
            "unique_id": f"{node}_{s.object_id}",
            "state_topic": source[s.stream],
            "value_template": s.template,
            "qos": 1,
            "device": {k: v for k, v in device.items() if v is not None},
            "origin": {"name": "edgefleet", "sw_version": _version(),
                       "support_url": "https://github.com/edgefleet/edgefleet"},
            **dict(s.extra),
        }  # fmt: skip
        if s.stream != "status":
            config |= {
                "availability_topic": status,
                "availability_template": "{{ value_json.state }}",
                "payload_available": "online",
                "payload_not_available": "offline",
            }
        out[f"{prefix}/{s.component}/{node}/{s.object_id}/config"] = config
    return out


class HomeAssistantPublisher:
    """Keeps the retained discovery configs of opted-in fleets in step with the store."""

    def __init__(
        self,
        broker_url: str,
        store: TelemetryStore,
        settings: HomeAssistantSettings,
        *,
        client_id: str = "edgefleet-homeassistant",
        version: MqttVersion = "5",
        owns_store: bool = False,
    ) -> None:
        self.settings = settings
        self._store = store
        # The Cloud opens a connection for the publisher alone; stop() must close it then.
        self._owns_store = owns_store
        self._address = BrokerAddress.parse(broker_url)
        self._client, self._props = make_client(
            self._address, client_id, version=version, persistent=False
        )
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._wake = threading.Event()
        # device -> what its configs were built from; a change republishes them.
        self._published: dict[tuple[str, str], tuple[Any, ...]] = {}
        self._thread: threading.Thread | None = None
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message

    def _on_connect(self, client: mqtt.Client, *_a: Any) -> None:
        self._connected.set()
        # Home Assistant announces itself here on restart; answer with every config again.
        client.subscribe(f"{self.settings.discovery_prefix}/status", qos=1)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.payload == b"online":
            self._published.clear()
            self._wake.set()

    def start(self, timeout: float = 10.0) -> HomeAssistantPublisher:
        """Connect, publish configs of known devices, then keep watching for new ones."""
        try:
            connect(self._client, self._address, self._props, persistent=False)
        except OSError as exc:
            raise CloudError(f"cannot reach the broker at {self._address.url}: {exc}") from None
        self._client.loop_start()
        if not self._connected.wait(timeout):
            raise CloudError(f"the broker at {self._address.url} did not accept the connection")
        self.sync()
        self._thread = threading.Thread(target=self._run, name="homeassistant", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.settings.interval_s)
            self._wake.clear()
            if not self._stop.is_set():
                try:
                    self.sync()
                except CloudError as exc:
                    log.warning("home assistant discovery: %s", exc)

    def sync(self) -> int:
        """Publish configs of devices that are new or changed; return how many were sent."""
        sent = 0
        for fleet in self.settings.fleets:
            for d in self._store.devices(fleet=fleet):
                key = (d.fleet, d.device_id)
                basis = (d.model, d.model_version, d.agent_version)
                if self._published.get(key) == basis:
                    continue
                for topic, config in discovery_configs(d, self.settings.discovery_prefix).items():
                    self._publish(topic, json.dumps(config).encode())
                    sent += 1
                self._published[key] = basis
        return sent

    def remove(self, fleet: str, device: str) -> None:
        """Delete a device's entities from Home Assistant (empty retained configs)."""
        prefix, node = self.settings.discovery_prefix, node_id(fleet, device)
        for s in SENSORS:
            self._publish(f"{prefix}/{s.component}/{node}/{s.object_id}/config", b"")
        self._published.pop((fleet, device), None)

    def _publish(self, topic: str, payload: bytes) -> None:
        info = self._client.publish(topic, payload, qos=1, retain=True)
        try:
            info.wait_for_publish(10)
        except (RuntimeError, ValueError) as exc:
            raise CloudError(f"could not publish discovery config {topic}: {exc}") from None

    def stop(self) -> None:
        """Stop watching and disconnect (the retained configs stay on the broker).

        With ``owns_store`` the store is closed too. Safe after a failed :meth:`start`.
        """
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)
        self._client.disconnect()
        self._client.loop_stop()
        if self._owns_store:
            self._store.close()
