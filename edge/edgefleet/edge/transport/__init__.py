"""Broker transports behind one seam (MQTT over paho today)."""

from edgefleet.edge.transport.base import LinkHandler, Transport

__all__ = ["LinkHandler", "Transport"]
