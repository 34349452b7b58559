"""Broker URLs and paho-mqtt clients configured the way the cloud needs them."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgefleet.protocol.errors import ConfigError

MqttVersion = Literal["5", "3.1.1"]
_SCHEMES = {"mqtt": (1883, False), "tcp": (1883, False), "mqtts": (8883, True), "ssl": (8883, True)}


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """Where a broker listens, parsed from ``mqtt://host:port`` or ``mqtts://host:port``."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        """Parse a broker URL, raising ConfigError with the accepted forms."""
        parts = urlsplit(url if "://" in url else f"mqtt://{url}")
        if parts.scheme not in _SCHEMES or not parts.hostname:
            raise ConfigError(
                f"broker URL {url!r} is not understood: write mqtt://host:1883 or mqtts://host:8883"
            )
        default_port, tls = _SCHEMES[parts.scheme]
        try:
            port = parts.port or default_port
        except ValueError:
            raise ConfigError(f"broker URL {url!r} has an invalid port") from None
        return cls(parts.hostname, port, tls, parts.username, parts.password)

    @property
    def url(self) -> str:
        """The URL without credentials."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def make_client(
    address: BrokerAddress,
    client_id: str,
    *,
    version: MqttVersion = "5",
    persistent: bool = True,
    session_expiry_s: int = 3600,
    max_inflight: int = 100,
) -> tuple[mqtt.Client, Properties | None]:
    """A paho client (callback API v2) and the CONNECT properties to connect it with.

    ``persistent`` keeps the broker-side session (subscriptions and queued QoS 1 messages)
    across reconnects: an ingest that restarts gets what arrived while it was down.
    """
    protocol = mqtt.MQTTv5 if version == "5" else mqtt.MQTTv311
    # MQTT v5 sets clean start per connect (see connect()); 3.1.1 fixes it on the client.
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=protocol,
        clean_session=None if version == "5" else not persistent,
    )
    client.max_inflight_messages_set(max_inflight)
    client.max_queued_messages_set(0)
    if address.username is not None:
        client.username_pw_set(address.username, address.password)
    if address.tls:
        client.tls_set_context(ssl.create_default_context())
    props = None
    if version == "5":
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = session_expiry_s if persistent else 0
    return client, props


def connect(
    client: mqtt.Client,
    address: BrokerAddress,
    props: Properties | None,
    *,
    persistent: bool = True,
    keepalive: int = 30,
) -> None:
    """Connect (blocking until the TCP connection is up; CONNACK arrives in the loop)."""
    if props is not None:
        client.connect(
            address.host,
            address.port,
            keepalive=keepalive,
            clean_start=not persistent,
            properties=props,
        )
    else:
        client.connect(address.host, address.port, keepalive=keepalive)
