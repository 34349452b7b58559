"""The MQTT transport's write path: packets of a loop turn go out together, and a burst the kernel
cannot take at once still goes out (the socket is then watched for writability)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable

from support.mqtt import Probe

from edgefleet.cloud.broker import MosquittoBroker
from edgefleet.edge.config import MqttConfig
from edgefleet.edge.transport.mqtt import MqttTransport, Will


class Handler:
    """Counts what the transport reports."""

    def __init__(self) -> None:
        self.connected = asyncio.Event()
        self.published = 0
        self.messages: list[tuple[str, bytes]] = []

    def on_connected(self) -> None:
        self.connected.set()

    def on_disconnected(self) -> None:
        self.connected.clear()

    def on_message(self, topic: str, payload: bytes) -> None:
        self.messages.append((topic, payload))

    def on_published(self) -> None:
        self.published += 1


async def _until(pred: Callable[[], bool], within: float) -> bool:
    deadline = asyncio.get_running_loop().time() + within
    while not pred():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def _transport(
    broker: MosquittoBroker, handler: Handler, name: str, inflight: int = 20
) -> MqttTransport:
    cfg = MqttConfig(host=broker.host, port=broker.port, max_inflight=inflight, keepalive_s=10)
    return MqttTransport(
        cfg, name, handler, subscriptions=[f"w/{name}/in"], will=Will(f"w/{name}/will", b"gone")
    )


def test_a_burst_larger_than_the_socket_buffer_goes_out(
    mosquitto_factory: Callable[..., MosquittoBroker],
) -> None:
    broker = mosquitto_factory()
    probe = Probe(broker.host, broker.port)
    probe.subscribe("w/burst/out/#")
    # Under the broker's max_packet_size (300 kB), all in flight at once: 50 MB queued in one
    # loop turn while the broker is frozen, so the kernel's buffers fill and the transport has
    # to wait for the socket to become writable again.
    payload = os.urandom(250_000)
    count = 200
    pid = broker.pid
    assert pid is not None

    async def main() -> int:
        handler = Handler()
        t = _transport(broker, handler, "burst", inflight=count)
        task = asyncio.create_task(t.run())
        try:
            await asyncio.wait_for(handler.connected.wait(), 10)
            os.kill(pid, signal.SIGSTOP)
            try:
                for i in range(count):
                    assert t.publish(f"w/burst/out/{i}", payload)
                await asyncio.sleep(0.3)
                stalls = t.write_stalls
            finally:
                os.kill(pid, signal.SIGCONT)
            assert await _until(lambda: handler.published == count and t.pending == 0, 60)
            await t.close()
            return stalls
        finally:
            t.abort()
            await asyncio.gather(task, return_exceptions=True)

    try:
        assert asyncio.run(main()) >= 1  # the socket was full while the broker was frozen
        assert probe.wait_for(lambda m: len(m) >= count, 30)
        assert sorted(m.topic for m in probe.messages) == sorted(
            f"w/burst/out/{i}" for i in range(count)
        )
        assert all(m.payload == payload for m in probe.messages)
    finally:
        probe.close()


def test_small_publishes_and_acks_of_one_turn_flow_both_ways(mosquitto: MosquittoBroker) -> None:
    probe = Probe(mosquitto.host, mosquitto.port)
    probe.subscribe("w/many/out/#")

    async def main() -> list[tuple[str, bytes]]:
        handler = Handler()
        t = _transport(mosquitto, handler, "many")
        task = asyncio.create_task(t.run())
        try:
            await asyncio.wait_for(handler.connected.wait(), 10)
            # QoS 1 messages to the device: its PUBACKs go out through the same write path.
            for i in range(50):
                probe.publish("w/many/in", str(i).encode())
            sent = 0
            while sent < 500:
                if t.pending < 20 and t.publish(f"w/many/out/{sent}", b"x" * 100):
                    sent += 1
                else:
                    await asyncio.sleep(0)
            assert await _until(
                lambda: handler.published == 500 and len(handler.messages) == 50, 30
            )
            await t.close()
            return handler.messages
        finally:
            t.abort()
            await asyncio.gather(task, return_exceptions=True)

    try:
        got = asyncio.run(main())
        assert [p for _t, p in got] == [str(i).encode() for i in range(50)]
        assert probe.wait_for(lambda m: len(m) >= 500, 30)
    finally:
        probe.close()
