"""``agent check``'s broker probe: connect as the agent would, read the CONNACK, disconnect."""

from __future__ import annotations

import os
import ssl
import time
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from edgefleet.edge.config import MqttConfig
from edgefleet.edge.errors import TransportError
from edgefleet.edge.transport.mqtt import broker_url, configure_client, describe_reason

__all__ = ["BrokerCheck", "BrokerUnreachable", "check_broker"]


class BrokerUnreachable(TransportError):
    """The broker the config names cannot be reached, or it refused the connection."""

    reason = "broker-unreachable"
    exit_code = 7


@dataclass(frozen=True, slots=True)
class BrokerCheck:
    """What one connection attempt found: reachable or not, the CONNACK, the time it took."""

    url: str
    connected: bool
    detail: str
    connack: str | None = None
    elapsed_ms: float = 0.0

    def line(self) -> str:
        """One line for the operator."""
        if self.connected:
            return (
                f"broker: connected to {self.url} in {self.elapsed_ms:.0f} ms "
                f"(CONNACK {self.connack}); {self.detail}"
            )
        return f"broker: cannot connect to {self.url}: {self.detail}"


def check_broker(cfg: MqttConfig, device_id: str, timeout_s: float = 5.0) -> BrokerCheck:
    """Connect with the config's host, TLS and credentials, wait for CONNACK, disconnect cleanly.

    Nothing is published and no will is set, so the check leaves no retained message and no
    session behind (clean session). The client id is the device id with a suffix: connecting
    as the device itself would make the broker drop a running agent's session.
    """
    url = broker_url(cfg)
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"{device_id}-check-{os.getpid()}",
        clean_session=True,
        protocol=mqtt.MQTTv311,
        reconnect_on_failure=False,
    )
    client.connect_timeout = timeout_s
    configure_client(client, cfg)
    result: dict[str, Any] = {}

    def on_connect(_c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        result["rc"] = rc

    client.on_connect = on_connect
    start = time.monotonic()
    try:
        client.connect(cfg.host, cfg.port, keepalive=max(5, int(timeout_s) + 1))
    except (OSError, ssl.SSLError, ValueError) as exc:
        return BrokerCheck(url, False, _describe_error(exc, timeout_s))
    try:
        deadline = start + timeout_s
        while "rc" not in result and time.monotonic() < deadline:
            rc = client.loop(timeout=0.05)
            # A refusing CONNACK also ends the loop call with an error: its reason says more.
            if "rc" not in result and rc not in (
                MQTTErrorCode.MQTT_ERR_SUCCESS,
                MQTTErrorCode.MQTT_ERR_AGAIN,
            ):
                return BrokerCheck(
                    url, False, f"the broker closed the connection before CONNACK ({rc.name})"
                )
        elapsed = (time.monotonic() - start) * 1000.0
        if "rc" not in result:
            return BrokerCheck(
                url, False, f"the socket opened but no CONNACK came within {timeout_s:g} s"
            )
        reason = result["rc"]
        if reason.is_failure:
            hint = ""
            if reason.value in (134, 135):
                hint = " (check mqtt.username, mqtt.password and the broker's ACL)"
            return BrokerCheck(
                url,
                False,
                f"the broker refused the connection: CONNACK {describe_reason(reason)}" + hint,
            )
        client.disconnect()
        client.loop(timeout=0.05)  # sends the DISCONNECT
        auth = f"user {cfg.username}" if cfg.username is not None else "no credentials"
        tls = "TLS" if cfg.tls else "no TLS"
        return BrokerCheck(
            url, True, f"{tls}, {auth}; nothing published", str(reason), round(elapsed, 1)
        )
    finally:
        sock = client.socket()
        if sock is not None:
            sock.close()


def _describe_error(exc: BaseException, timeout_s: float) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc} (check mqtt.ca_file, cert_file and key_file)"
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout_s:g} s (a firewall, or the wrong host)"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the broker running, and is mqtt.port right?)"
    return str(exc)
