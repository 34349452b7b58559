"""Home Assistant discovery: required keys of the documented schema, opt-in, availability = LWT."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from support.cloud_ingest import sqlite_url
from support.dashboard_devices import SimDevice
from support.mqtt import Probe

from edgefleet.cloud.app import Cloud, CloudConfig
from edgefleet.cloud.broker import free_port
from edgefleet.cloud.errors import CloudError, StoreError
from edgefleet.cloud.homeassistant import (
    HomeAssistantPublisher,
    HomeAssistantSettings,
    discovery_configs,
)
from edgefleet.cloud.store import open_store
from edgefleet.cloud.store.base import DeviceState
from edgefleet.protocol.errors import ConfigError, TopicError

CONFIG_TOPIC = re.compile(
    r"homeassistant/(sensor|binary_sensor)/[a-zA-Z0-9_-]+/[a-zA-Z0-9_-]+/config\Z"
)
TEMPLATE = re.compile(r"\{\{ value_json((?:\.[a-z0-9_]+(?:\[-?\d+\])?)+) \}\}\Z")
# Written down here from Home Assistant's documentation, independently of the module under test
# (https://www.home-assistant.io/integrations/sensor.mqtt/, .../binary_sensor.mqtt/ and
# .../mqtt/#discovery-messages): `state_topic` is the one required option of both components;
# tying an entity to a device needs `unique_id` and a `device` block with at least one of
# `identifiers` or `connections`; an `origin` block requires `name`; availability is read from
# `availability_topic` (single-topic form), whose payloads default to "online"/"offline".
HA_REQUIRED = {"sensor": ("state_topic",), "binary_sensor": ("state_topic",)}
HA_DEVICE_REGISTRY = ("unique_id", "device")
HA_DEVICE_IDS = ("identifiers", "connections")
HA_ORIGIN_REQUIRED = ("name",)
HA_KNOWN_COMPONENTS = {"sensor", "binary_sensor"}


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
        assert component in HA_KNOWN_COMPONENTS, topic
        for key in (*HA_REQUIRED[component], *HA_DEVICE_REGISTRY):
            assert c.get(key), f"{topic} lacks {key}"
        assert isinstance(c["state_topic"], str)
        assert not set("+#") & set(c["state_topic"]), "a state topic is one topic, no wildcard"
        assert any(c["device"].get(k) for k in HA_DEVICE_IDS), f"{topic}: device has no ids"
        assert isinstance(c["device"]["identifiers"], list)  # list or string; we send a list
        assert c["device"]["identifiers"] == ["edgefleet_plant-a_pump_7"]
        if "origin" in c:
            for key in HA_ORIGIN_REQUIRED:
                assert c["origin"].get(key), f"{topic}: origin lacks {key}"
        assert c["origin"]["name"] == "edgefleet"
        # The single-topic and the list form of availability must not be mixed.
        assert not ("availability" in c and "availability_topic" in c), topic
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


def test_publisher_that_cannot_reach_the_broker_still_closes_its_store(tmp_path: Path) -> None:
    store = open_store(sqlite_url(tmp_path))
    ha = HomeAssistantPublisher(
        f"mqtt://127.0.0.1:{free_port('127.0.0.1')}",  # nothing listens there
        store,
        HomeAssistantSettings(fleets=("plant-a",)),
        owns_store=True,
    )
    with pytest.raises(CloudError, match="cannot reach the broker"):
        ha.start(timeout=5)
    ha.stop()  # what Cloud.stop() does after a failed start
    with pytest.raises(StoreError):
        store.devices()


@pytest.mark.slow
def test_discovery_published_retained_and_availability_follows_lwt(
    mosquitto_factory, tmp_path: Path
) -> None:
    broker = mosquitto_factory()
    # Opted in through CloudConfig, as `edgefleet cloud run --homeassistant-fleet plant-a` does.
    settings = HomeAssistantSettings(fleets=("plant-a",), interval_s=0.2)
    with Cloud(CloudConfig(workdir=tmp_path, broker_url=broker.url, http_port=0,
                           batch_max_delay_s=0.02, homeassistant=settings)) as cloud:  # fmt: skip
        ha = cloud.homeassistant
        assert ha is not None
        opted = SimDevice(broker.host, broker.port, "pump-1", "plant-a")
        other = SimDevice(broker.host, broker.port, "pump-9", "plant-b")
        for d in (opted, other):
            d.birth()
            d.send_health(temperature_c=51.5)
        assert opted.wait_committed()
        assert other.wait_committed()
        probe = Probe(broker.host, broker.port)
        try:
            probe.subscribe("homeassistant/#")
            assert probe.wait_for(lambda ms: len(ms) >= 7)
            configs = {m.topic: json.loads(m.payload) for m in probe.messages}
            # Retained: a Home Assistant that subscribes later (or restarts) still gets them.
            late = Probe(broker.host, broker.port)
            try:
                late.subscribe("homeassistant/#")
                assert late.wait_for(lambda ms: len(ms) >= 7)
                assert all(m.retain for m in late.messages)
                assert {m.topic for m in late.messages} == set(configs)
            finally:
                late.close()
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
            other.close()
    # The publisher's own store connection is closed with the cloud.
    with pytest.raises(StoreError):
        ha._store.devices()
