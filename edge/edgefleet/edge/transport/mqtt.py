"""MQTT over paho-mqtt 2.x, driven by the asyncio loop through paho's socket callbacks.

No network thread per client: paho's ``loop_start`` uses ``select()`` and tops out near 339
clients in one process, while the simulator runs hundreds of agents on one loop. The socket is
registered with ``loop.add_reader``/``add_writer`` and paho's ``loop_read``/``loop_write``/
``loop_misc`` do the protocol work (paho's examples/loop_asyncio.py shows the pattern). Every
(re)connection uses a fresh paho client so no stale in-flight state of an old session is
replayed on top of the uplink's own ordered replay. Outgoing packets are written from one
``call_soon`` callback per loop turn; the socket is watched for writability only when the
kernel's buffer was full (registering a writer per publish costs two ``epoll_ctl`` calls and a
loop turn, which dominated a process of a thousand agents).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from edgefleet.edge.config import MqttConfig
from edgefleet.edge.errors import TransportError
from edgefleet.edge.transport.base import LinkHandler

log = logging.getLogger(__name__)

# While the broker stays unreachable, one line per this many seconds (each attempt at debug).
OUTAGE_LOG_EVERY_S = 60.0


def broker_url(cfg: MqttConfig) -> str:
    """``mqtt://host:port`` (``mqtts://`` with TLS), as logs and ``agent check`` name the broker."""
    host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    return f"{'mqtts' if cfg.tls else 'mqtt'}://{host}:{cfg.port}"


def configure_client(client: mqtt.Client, cfg: MqttConfig) -> None:
    """Apply the config's credentials and TLS settings to a paho client."""
    if cfg.username is not None:
        client.username_pw_set(cfg.username, cfg.password)
    if cfg.tls:
        try:
            client.tls_set(
                ca_certs=cfg.ca_file,
                certfile=cfg.cert_file,
                keyfile=cfg.key_file,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise TransportError(f"cannot set up TLS: {exc}") from None


def describe_reason(rc: Any, *, from_broker: bool = True) -> str:
    """A reason code as operators read it: its name, its number, and what paho's name hides."""
    name = str(rc)
    value = getattr(rc, "value", None)
    if not from_broker and name == "Unspecified error":
        # paho reports a socket that closed under it (broker killed, network gone) this way.
        return "connection lost (the broker closed the socket or the network dropped)"
    if name == "Keep alive timeout":
        return "keepalive timeout (the broker stopped answering pings)"
    return f"{name} (code {value})" if value is not None else name


@dataclass(frozen=True, slots=True)
class Will:
    """The retained message the broker publishes if the device vanishes."""

    topic: str
    payload: bytes


class MqttTransport:
    """One device's MQTT session, reconnecting with jittered exponential backoff."""

    def __init__(
        self,
        cfg: MqttConfig,
        client_id: str,
        handler: LinkHandler,
        *,
        subscriptions: list[str],
        will: Will | Callable[[], Will],
        birth: Callable[[], tuple[str, bytes]] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.cfg = cfg
        self.client_id = client_id
        self._handler = handler
        self._subs = subscriptions
        self._will = will
        self._birth = birth
        self._loop = loop
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not crypto
        self._client: mqtt.Client | None = None
        self._sock: Any = None
        self._writing = False
        self._connected = False
        self._closing = False
        self._session_down: asyncio.Event | None = None
        self._connack: asyncio.Future[bool] | None = None
        self._misc: asyncio.TimerHandle | None = None
        self._write_soon: asyncio.Handle | None = None
        self._mids: set[int] = set()
        self._loop_thread: int | None = None
        self.connects = 0
        # Times the kernel's send buffer was full and the socket had to be watched for writes.
        self.write_stalls = 0
        self.last_error = ""
        self.url = broker_url(cfg)
        # Failed attempts since the last session (or the start), for one log line per outage.
        self._failures = 0
        self._down_since: float | None = None
        self._last_outage_log = 0.0

    # ------------------------------------------------------------------ state

    @property
    def connected(self) -> bool:
        """True between CONNACK and the loss of the connection."""
        return self._connected

    @property
    def closing(self) -> bool:
        """True once close() or abort() was called."""
        return self._closing

    @property
    def pending(self) -> int:
        """QoS 1 publishes awaiting PUBACK on this session."""
        return len(self._mids)

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> bool:
        """Queue one publish; False when no session is up (the caller keeps the data)."""
        client = self._client
        if client is None or not self._connected:
            return False
        info = client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return False
        if qos:
            self._mids.add(info.mid)
        return True

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Keep a session up until :meth:`close` or :meth:`abort`."""
        loop = self._loop = self._loop or asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        auth = f", user {self.cfg.username}" if self.cfg.username is not None else ""
        log.info("%s: connecting to the broker at %s%s", self.client_id, self.url, auth)
        attempt = 0
        while not self._closing:
            ok = await self._connect_once(loop)
            if ok:
                attempt = 0
                assert self._session_down is not None
                await self._session_down.wait()
                if self.closing:
                    break
            attempt += 1
            ceiling = min(
                self.cfg.reconnect_max_s, self.cfg.reconnect_min_s * 2 ** min(attempt, 20)
            )
            # Full jitter: a fleet that lost its broker together must not come back together.
            delay = self._rng.uniform(
                self.cfg.reconnect_min_s, max(ceiling, self.cfg.reconnect_min_s)
            )
            await asyncio.sleep(delay)

    def _new_client(self) -> mqtt.Client:
        cfg = self.cfg
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=cfg.clean_session,
            protocol=mqtt.MQTTv311,
            reconnect_on_failure=False,
        )
        client.max_inflight_messages_set(cfg.max_inflight)
        client.max_queued_messages_set(0)
        configure_client(client, cfg)
        will = self._will() if callable(self._will) else self._will
        client.will_set(will.topic, will.payload, qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        return client

    async def _connect_once(self, loop: asyncio.AbstractEventLoop) -> bool:
        client = self._client = self._new_client()
        self._session_down = asyncio.Event()
        self._connack = loop.create_future()
        self._mids.clear()
        try:
            # The TCP (and TLS) handshake blocks: do it off the loop. Socket callbacks that
            # fire on that thread hop back to the loop (see _in_loop).
            await loop.run_in_executor(
                None,
                lambda: client.connect(self.cfg.host, self.cfg.port, self.cfg.keepalive_s),
            )
        except (OSError, ssl.SSLError, ValueError) as exc:
            self.last_error = f"cannot reach the broker at {self.url}: {exc}"
            # A TLS failure (wrong CA, expired or refused certificate) needs an operator: every
            # attempt shows. A broker that is down comes back by itself: one line per outage.
            self._attempt_failed(always=isinstance(exc, ssl.SSLError))
            self._drop_socket()
            return False
        if self._closing:
            self._drop_socket()
            return False
        self._schedule_misc()
        try:
            ok = await asyncio.wait_for(asyncio.shield(self._connack), self.cfg.connect_timeout_s)
        except TimeoutError:
            ok = False
            self.last_error = (
                f"the broker at {self.url} accepted the socket but sent no CONNACK within "
                f"{self.cfg.connect_timeout_s:g} s"
            )
            self._attempt_failed()
        if not ok:
            self._drop_socket()
            return False
        return True

    def _attempt_failed(self, *, always: bool = False) -> None:
        """Log a failed attempt: the first of an outage, then one line a minute, else debug."""
        now = time.monotonic()
        self._failures += 1
        if self._down_since is None:
            self._down_since = now
        first = self._failures == 1
        if always or first or now - self._last_outage_log >= OUTAGE_LOG_EVERY_S:
            self._last_outage_log = now
            if first:
                log.warning(
                    "%s: %s; retrying with backoff (up to %g s), records wait in the outbox",
                    self.client_id,
                    self.last_error,
                    self.cfg.reconnect_max_s,
                )
            else:
                log.warning(
                    "%s: still no broker after %d attempts over %.0f s: %s",
                    self.client_id,
                    self._failures,
                    now - self._down_since,
                    self.last_error,
                )
        else:
            log.debug("%s: %s", self.client_id, self.last_error)

    async def close(self, final: tuple[str, bytes] | None = None, wait_s: float = 5.0) -> None:
        """Send ``final`` as a retained QoS 1 message, wait for its PUBACK, then DISCONNECT."""
        self._closing = True
        client = self._client
        if client is not None and self._connected:
            if final is not None:
                info = client.publish(final[0], final[1], qos=1, retain=True)
                deadline = asyncio.get_running_loop().time() + wait_s
                while not info.is_published() and self._connected:
                    if asyncio.get_running_loop().time() > deadline:
                        break
                    await asyncio.sleep(0.01)
            client.disconnect()
            assert self._session_down is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._session_down.wait(), wait_s)
        self._drop_socket()
        if self._session_down is not None:
            self._session_down.set()

    def abort(self) -> None:
        """Close the socket with no DISCONNECT: to the broker this is a crash, so the will fires."""
        if self._connected:
            log.info(
                "%s: dropped the connection to %s without DISCONNECT (the broker publishes "
                "the will)",
                self.client_id,
                self.url,
            )
        self._closing = True
        self._drop_socket()
        self._connected = False
        if self._session_down is not None:
            self._session_down.set()

    # ------------------------------------------------------------------ paho callbacks

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
        if client is not self._client:
            return
        if rc.is_failure:
            self.last_error = (
                f"the broker at {self.url} refused the connection: CONNACK {describe_reason(rc)}"
            )
            if rc.value in (4, 5, 134, 135):
                self.last_error += " (check mqtt.username, mqtt.password and the broker's ACL)"
            # A refusal needs an operator, as a TLS failure does: every attempt shows.
            self._attempt_failed(always=True)
            if self._connack is not None and not self._connack.done():
                self._connack.set_result(False)
            return
        if self._down_since is not None and self._failures:
            log.info(
                "%s: connected to %s after %d failed attempts over %.1f s (CONNACK %s, "
                "session present: %s)",
                self.client_id,
                self.url,
                self._failures,
                time.monotonic() - self._down_since,
                rc,
                bool(getattr(flags, "session_present", False)),
            )
        else:
            log.info(
                "%s: connected to %s (CONNACK %s, session present: %s)",
                self.client_id,
                self.url,
                rc,
                bool(getattr(flags, "session_present", False)),
            )
        self._failures = 0
        self._down_since = None
        for flt in self._subs:
            client.subscribe(flt, qos=1)
        if self._birth is not None:
            topic, payload = self._birth()
            client.publish(topic, payload, qos=1, retain=True)
        self._connected = True
        self.connects += 1
        if self._connack is not None and not self._connack.done():
            self._connack.set_result(True)
        self._handler.on_connected()

    def _on_disconnect(self, client: mqtt.Client, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
        if client is not self._client:
            return
        was = self._connected
        self._connected = False
        self._mids.clear()
        if self._connack is not None and not self._connack.done():
            self._connack.set_result(False)
        if self._session_down is not None:
            self._session_down.set()
        if was:
            from_broker = bool(getattr(flags, "is_disconnect_packet_from_server", False))
            reason = describe_reason(rc, from_broker=from_broker)
            self.last_error = f"connection lost: {reason}"
            if self._closing:
                log.info("%s: disconnected from %s (shutdown)", self.client_id, self.url)
            else:
                log.warning(
                    "%s: disconnected from %s: %s; reconnecting, records wait in the outbox",
                    self.client_id,
                    self.url,
                    reason,
                )
                self._down_since = time.monotonic()
            self._handler.on_disconnected()

    def _on_message(self, client: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if client is self._client:
            self._handler.on_message(msg.topic, bytes(msg.payload))

    def _on_publish(self, client: mqtt.Client, _u: Any, mid: int, _rc: Any, _p: Any) -> None:
        if client is self._client and mid in self._mids:
            self._mids.discard(mid)
            self._handler.on_published()

    # ------------------------------------------------------------------ socket plumbing

    def _in_loop(self, fn: Callable[[], None]) -> None:
        loop = self._loop
        assert loop is not None
        if threading.get_ident() == self._loop_thread:
            fn()
        else:
            loop.call_soon_threadsafe(fn)

    def _on_socket_open(self, client: mqtt.Client, _u: Any, sock: Any) -> None:
        def register() -> None:
            if client is self._client and not self._closing:
                self._sock = sock
                assert self._loop is not None
                self._loop.add_reader(sock, self._read_ready, client)

        self._in_loop(register)

    def _on_socket_close(self, client: mqtt.Client, _u: Any, sock: Any) -> None:
        def unregister() -> None:
            assert self._loop is not None
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(sock)
                self._loop.remove_writer(sock)
            if self._sock is sock:
                self._sock = None
                self._writing = False

        self._in_loop(unregister)

    def _on_register_write(self, client: mqtt.Client, _u: Any, sock: Any) -> None:
        def register() -> None:
            if (
                client is self._client
                and not self._writing
                and self._write_soon is None
                and not self._closing_hard(sock)
            ):
                # Packets queued during this loop turn go out together, right after it.
                assert self._loop is not None
                self._write_soon = self._loop.call_soon(self._write_now, client, sock)

        self._in_loop(register)

    def _write_now(self, client: mqtt.Client, sock: Any) -> None:
        self._write_soon = None
        if client is not self._client or self._closing_hard(sock):
            return
        client.loop_write()
        # Left over: the kernel's buffer is full, so wait until the socket is writable again
        # (paho does not call register_write a second time while its first is outstanding).
        if (
            client is self._client
            and client.want_write()
            and not self._writing
            and not self._closing_hard(sock)
        ):
            self._writing = True
            self.write_stalls += 1
            assert self._loop is not None
            self._loop.add_writer(sock, self._write_ready, client)

    def _on_unregister_write(self, client: mqtt.Client, _u: Any, sock: Any) -> None:
        def unregister() -> None:
            if self._writing:
                self._writing = False
                assert self._loop is not None
                with contextlib.suppress(ValueError, OSError):
                    self._loop.remove_writer(sock)

        self._in_loop(unregister)

    def _closing_hard(self, sock: Any) -> bool:
        return bool(sock.fileno() < 0)

    def _read_ready(self, client: mqtt.Client) -> None:
        if client is self._client:
            client.loop_read(max_packets=100)

    def _write_ready(self, client: mqtt.Client) -> None:
        if client is self._client:
            client.loop_write()

    def _schedule_misc(self) -> None:
        assert self._loop is not None
        if self._misc is not None:
            self._misc.cancel()
        self._misc = self._loop.call_later(1.0, self._tick)

    def _tick(self) -> None:
        self._misc = None
        client = self._client
        if client is None or self._sock is None:
            return
        client.loop_misc()  # keepalive pings and their timeout
        if self._client is client and self._sock is not None:
            self._schedule_misc()

    def _drop_socket(self) -> None:
        if self._misc is not None:
            self._misc.cancel()
            self._misc = None
        if self._write_soon is not None:
            self._write_soon.cancel()
            self._write_soon = None
        sock, self._sock = self._sock, None
        if sock is None and self._client is not None:
            sock = self._client.socket()
        self._client = None
        self._connected = False
        self._writing = False
        if sock is not None and self._loop is not None:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(sock)
                self._loop.remove_writer(sock)
            with contextlib.suppress(OSError):
                sock.close()
