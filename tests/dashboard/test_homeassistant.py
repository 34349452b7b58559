"""Home Assistant discovery: required keys of the documented schema, opt-in, availability = LWT."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from support.dashboard_devices import SimDevice
from support.mqtt import Probe

from edgefleet.cloud.app import Cloud, CloudConfig
from edgefleet.cloud.homeassistant import (
    REQUIRED_KEYS,
    HomeAssistantPublisher,
    HomeAssistantSettings,
    discovery_configs,
)
from edgefleet.cloud.store.base import DeviceState
from edgefleet.protocol.errors import ConfigError, TopicError

CONFIG_TOPIC = re.compile(
    r"homeassistant/(sensor|binary_sensor)/[a-zA-Z0-9_-]+/[a-zA-Z0-9_-]+/config\Z"
)
TEMPLATE = re.compile(r"\{\{ value_json((?:\.[a-z0-9_]+(?:\[-?\d+\])?)+) \}\}\Z")


def render(template: str, payload: bytes) -> str:
    """Evaluate the `{{ value_json.a.b[-1].c }}` templates we publish, as Home Assistant does."""
    m = TEMPLATE.match(template)
    assert m, f"template {template!r} is not a plain value_json path"
    value: Any = json.loads(payload)
    for part in m.group(1).strip(".").split("."):
        name, _, index = part.partition("[")
        value = value[name]
        if index:
            value = value[int(index.rstrip("]"))]
    return str(value)


def _device(**kw: Any) -> DeviceState:
    base: dict[str, Any] = dict.fromkeys(DeviceState.__slots__)  # type: ignore[attr-defined]
    base |= {"device_id": "pump.7", "fleet": "plant-a", "online": True, "first_seen": 0.0,
             "last_seen": 0.0, "agent_version": "0.1.0", "model": "vib", "model_version": "1.0.0",
             "tags": ()}  # fmt: skip
    return DeviceState(**(base | kw))


def test_configs_have_the_schema_required_keys() -> None:
    configs = discovery_configs(_device())
    assert len(configs) == 7
    ids = set()
    for topic, c in configs.items():
        assert CONFIG_TOPIC.match(topic), topic
        component = topic.split("/")[1]
        for key in REQUIRED_KEYS[component]:
            assert c.get(key), f"{topic} lacks {key}"
        assert c["device"]["identifiers"] == ["edgefleet_plant-a_pump_7"]
        assert c["origin"]["name"] == "edgefleet"
        assert TEMPLATE.match(c["value_template"])
        ids.add(c["unique_id"])
        if component == "sensor":
            assert c["availability_topic"] == "edgefleet/v1/plant-a/pump.7/status"
            assert c["availability_template"] == "{{ value_json.state }}"
            assert (c["payload_available"], c["payload_not_available"]) == ("online", "offline")
        else:
            assert "availability_topic" not in c  # "offline" must read as off, not unavailable
            assert (c["payload_on"], c["payload_off"]) == ("online", "offline")
    assert len(ids) == 7
    names = {c["name"] for c in configs.values()}
    assert {"Anomaly score", "Last class", "Inference latency", "Temperature", "Online"} <= names


def test_settings_are_opt_in_and_validated() -> None:
    with pytest.raises(ConfigError):
        HomeAssistantSettings(fleets=())
    with pytest.raises(TopicError):
        HomeAssistantSettings(fleets=("a/b",))
    with pytest.raises(ConfigError):
        HomeAssistantSettings(fleets=("a",), discovery_prefix="home/#")


@pytest.mark.slow
def test_discovery_published_retained_and_availability_follows_lwt(
    mosquitto_factory, tmp_path: Path
) -> None:
    broker = mosquitto_factory()
    with Cloud(CloudConfig(workdir=tmp_path, broker_url=broker.url, http_port=0,
                           batch_max_delay_s=0.02)) as cloud:  # fmt: skip
        assert cloud.store is not None
        opted = SimDevice(broker.host, broker.port, "pump-1", "plant-a")
        other = SimDevice(broker.host, broker.port, "pump-9", "plant-b")
        for d in (opted, other):
            d.birth()
            d.send_health(temperature_c=51.5)
        assert opted.wait_committed()
        assert other.wait_committed()
        ha = HomeAssistantPublisher(
            broker.url, cloud.store, HomeAssistantSettings(fleets=("plant-a",), interval_s=0.2)
        ).start()
        probe = Probe(broker.host, broker.port)
        try:
            probe.subscribe("homeassistant/#")
            assert probe.wait_for(lambda ms: len(ms) >= 7)
            configs = {m.topic: json.loads(m.payload) for m in probe.messages}
            assert all(m.retain for m in probe.messages)  # retained: HA sees them after restarts
            assert all("plant-a" in t for t in configs)  # the other fleet did not opt in
            temp = next(c for c in configs.values() if c["name"] == "Temperature")
            avail_topic = temp["availability_topic"]

            probe.subscribe(avail_topic)

            def availability(ms) -> list[str]:
                return [render(temp["availability_template"], m.payload)
                        for m in ms if m.topic == avail_topic]  # fmt: skip

            assert probe.wait_for(lambda ms: temp["payload_available"] in availability(ms))
            probe.subscribe(temp["state_topic"])
            opted.send_health(temperature_c=63.25)
            state_topic, value = temp["state_topic"], temp["value_template"]

            def temperatures(ms) -> list[str]:
                return [render(value, m.payload) for m in ms if m.topic == state_topic]

            assert probe.wait_for(lambda ms: "63.25" in temperatures(ms))
            opted.kill()  # the broker publishes the will on the status topic
            assert probe.wait_for(
                lambda ms: availability(ms)[-1:] == [temp["payload_not_available"]], timeout=10
            )
            # Home Assistant restarted: it announces itself and gets every config again.
            before = len(probe.messages)
            probe.publish("homeassistant/status", b"online")
            assert probe.wait_for(lambda ms: sum(
                m.topic.startswith("homeassistant/sensor") for m in ms[before:]) >= 6)  # fmt: skip
            ha.remove("plant-a", "pump-1")
            assert probe.wait_for(lambda ms: sum(m.payload == b"" for m in ms) == 7)
        finally:
            probe.close()
            ha.stop()
            other.close()
