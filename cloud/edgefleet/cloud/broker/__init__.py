"""MQTT brokers the project starts itself: Mosquitto with our config, or an embedded one."""

from edgefleet.cloud.broker.base import BrokerNotReady, BrokerProcess, free_port
from edgefleet.cloud.broker.embedded import EmbeddedBroker
from edgefleet.cloud.broker.mosquitto import MosquittoBroker, mosquitto_available

__all__ = [
    "BrokerNotReady",
    "BrokerProcess",
    "EmbeddedBroker",
    "MosquittoBroker",
    "free_port",
    "mosquitto_available",
]
