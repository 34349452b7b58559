"""A minimal protocol-speaking ingest for tests: store records once, answer with Commit.

It subscribes to every device message, dedupes records on ``(device_id, boot_id, seq)``, and
publishes a :class:`~edgefleet.protocol.messages.Commit` on ``cmd/commit`` for what it stored,
the way the cloud's ingest does. ``pause()`` stops commits (an ingest outage), ``resume()``
starts them again.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.protocol import topics
from edgefleet.protocol.codec import decode
from edgefleet.protocol.errors import DecodeError
from edgefleet.protocol.messages import (
    CommandAck,
    Commit,
    Envelope,
    InferenceBatch,
    ReadingBatch,
    Status,
    ranges_of,
    record_seqs,
)
from support.trust import sign_command, signed_payload


class _SigningClient(mqtt.Client):
    """A paho client whose publishes on command topics are signed by the test command key.

    Tests publish commands through ``acker.client`` the way the cloud would; the cloud signs
    every command, so this one does too (a payload that is signed already goes as it is).
    """

    def publish(  # type: ignore[override]
        self, topic: str, payload: bytes | bytearray | str | None = None, *a: Any, **kw: Any
    ) -> mqtt.MQTTMessageInfo:
        if isinstance(payload, bytes | bytearray):
            payload = signed_payload(topic, bytes(payload))
        return super().publish(topic, payload, *a, **kw)


class CommitAcker:
    """Stores every record once and commits it back to its device."""

    def __init__(self, host: str, port: int, fleet: str = "default", node: str = "ingest-test"):
        self.fleet = fleet
        self.node = node
        self.records: dict[tuple[str, str, int], Envelope] = {}
        self.received: Counter[tuple[str, str, int]] = Counter()
        self.kinds: Counter[str] = Counter()
        self.statuses: list[Status] = []
        self.acks: list[CommandAck] = []
        self.messages: list[tuple[str, Envelope]] = []
        self.bad = 0
        self.paused = False
        self._cond = threading.Condition()
        self._seq = 0
        self.client = _SigningClient(
            CallbackAPIVersion.VERSION2, client_id=node, clean_session=True
        )
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.reconnect_delay_set(0.1, 1)
        self._subscribed = threading.Event()
        self.client.connect(host, port)
        self.client.loop_start()
        assert self._subscribed.wait(10), "acker did not subscribe"

    def _on_connect(self, client: mqtt.Client, *_a: object) -> None:
        for flt in topics.uplink_filters(self.fleet):
            client.subscribe(flt, qos=1)
        self._subscribed.set()

    def _on_message(self, client: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        try:
            message = decode(msg.payload)
        except DecodeError:
            with self._cond:
                self.bad += 1
            return
        with self._cond:
            self.messages.append((msg.topic, message))
            if isinstance(message, Status):
                self.statuses.append(message)
                self._cond.notify_all()
                return
            if isinstance(message, CommandAck):
                self.acks.append(message)
            seqs = record_seqs(message)
            for s in seqs:
                key = (message.device_id, message.boot_id, s)
                self.received[key] += 1
                if key not in self.records:
                    self.records[key] = message
                    self.kinds[type(message).__name__] += 1
            self._cond.notify_all()
            paused = self.paused
        if not paused:
            self._seq += 1
            commit = Commit(
                device_id=self.node,
                boot_id="ingest",
                seq=self._seq,
                sent_at=time.time(),
                ranges=ranges_of(message.boot_id, seqs),
            )
            topic = topics.command(self.fleet, message.device_id, "commit")
            client.publish(topic, sign_command(topic, commit), qos=1)

    def pause(self) -> None:
        """Stop committing (an ingest outage): records are still received and stored."""
        with self._cond:
            self.paused = True

    def resume(self) -> None:
        """Commit again, from the next message on (earlier ones are committed when resent)."""
        with self._cond:
            self.paused = False

    def wait_for(self, pred: Callable[[CommitAcker], bool], timeout: float = 20) -> bool:
        """Wait until ``pred(self)`` holds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not pred(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.2))
            return True

    def seqs(self, device: str) -> dict[str, set[int]]:
        """Stored record seqs of ``device`` per boot."""
        out: dict[str, set[int]] = defaultdict(set)
        with self._cond:
            for dev, boot, seq in self.records:
                if dev == device:
                    out[boot].add(seq)
        return out

    def inference_records(self, device: str) -> int:
        """Stored inference records of ``device``."""
        with self._cond:
            return sum(
                1
                for (d, _b, _s), m in self.records.items()
                if d == device and isinstance(m, InferenceBatch | ReadingBatch)
            )

    def close(self) -> None:
        """Disconnect."""
        self.client.disconnect()
        self.client.loop_stop()
