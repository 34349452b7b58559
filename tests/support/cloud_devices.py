"""Protocol-speaking test devices (paho) that keep an outbox and delete only on commit-ack.

They stand in for real agents in the cloud tests: each record takes a seq from one counter per
boot, is kept until a :class:`Commit` covers it, and can be resent (as a device does after a
timeout).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.protocol import codec, topics
from edgefleet.protocol.messages import (
    CommandAck,
    Commit,
    Envelope,
    Event,
    Health,
    InferenceBatch,
    InferenceRecord,
    ReadingBatch,
    ReadingRecord,
    Status,
)


class TestDevice:
    """One simulated device: birth/LWT, telemetry with an outbox, commands in."""

    __test__ = False  # not a pytest class

    def __init__(
        self,
        host: str,
        port: int,
        device_id: str,
        fleet: str = "f1",
        *,
        codec_name: str = "json",
        v5: bool = False,
    ) -> None:
        self.device_id = device_id
        self.fleet = fleet
        self.boot_id = secrets.token_hex(6)
        self.codec = codec_name
        self._seq = 0
        self._lock = threading.Condition()
        # seq -> (topic, payload) of every record-carrying message still un-committed.
        self.outbox: dict[int, tuple[str, bytes, tuple[int, ...]]] = {}
        self.committed: set[int] = set()
        # Every record message ever sent, for replays of redelivery.
        self.sent: dict[int, tuple[str, bytes, tuple[int, ...]]] = {}
        self.commits: list[Commit] = []
        self.commands: list[Envelope] = []
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=device_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        )
        will = self._status("offline", "lwt")
        self.client.will_set(topics.status(fleet, device_id), will, qos=1, retain=True)
        self.client.on_message = self._on_message
        self.client.max_inflight_messages_set(1000)
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.on_connect = lambda c, *_a: c.subscribe(
            [(f, 1) for f in topics.device_command_filters(fleet, device_id)]
        )
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()
        assert subscribed.wait(10), f"{device_id}: no SUBACK"

    # -- envelope --------------------------------------------------------------------------
    def next_seq(self) -> int:
        """Take the next seq of this boot."""
        with self._lock:
            s = self._seq
            self._seq += 1
            return s

    def _env(self, seq: int | None = None) -> dict[str, object]:
        return {
            "device_id": self.device_id,
            "boot_id": self.boot_id,
            "seq": self.next_seq() if seq is None else seq,
            "sent_at": time.time(),
        }

    def _status(self, state: str, reason: str) -> bytes:
        return codec.encode(
            Status(state=state, reason=reason, agent_version="test-1.0", **self._env(0)),  # type: ignore[arg-type]
            self.codec,
        )

    # -- sending ---------------------------------------------------------------------------
    def birth(self) -> None:
        """Publish the retained online status."""
        self.publish_raw(
            topics.status(self.fleet, self.device_id), self._status("online", "start"), retain=True
        )

    def publish_raw(
        self, topic: str, payload: bytes, *, retain: bool = False, wait: bool = True
    ) -> None:
        """Publish bytes as they are (for hostile cases); waits for the PUBACK."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        if wait:
            info.wait_for_publish(10)

    def _send_record(self, topic: str, msg: Envelope, seqs: tuple[int, ...], wait: bool) -> None:
        payload = codec.encode(msg, self.codec)
        with self._lock:
            self.outbox[seqs[0]] = (topic, payload, seqs)
            self.sent[seqs[0]] = (topic, payload, seqs)
        self.publish_raw(topic, payload, wait=wait)

    def send_readings(self, n: int, *, stream: str = "accel", wait: bool = True) -> list[int]:
        """One readings/1 batch of ``n`` records; returns their seqs."""
        seqs = tuple(self.next_seq() for _ in range(n))
        recs = [ReadingRecord(seq=s, t=time.time(), values=[float(s), 1.0]) for s in seqs]
        msg = ReadingBatch(
            device_id=self.device_id, boot_id=self.boot_id, seq=seqs[0], sent_at=time.time(),
            channels=["x", "y"], records=recs,
        )  # fmt: skip
        self._send_record(topics.telemetry(self.fleet, self.device_id, stream), msg, seqs, wait)
        return list(seqs)

    def send_inference(self, n: int, *, wait: bool = True) -> list[int]:
        """One inference/1 batch of ``n`` records."""
        seqs = tuple(self.next_seq() for _ in range(n))
        recs = [
            InferenceRecord(seq=s, t=time.time(), outputs=[0.1, 0.9], label="b", score=0.9)
            for s in seqs
        ]
        msg = InferenceBatch(
            device_id=self.device_id, boot_id=self.boot_id, seq=seqs[0], sent_at=time.time(),
            model="kws", model_version="1.0.0", records=recs,
        )  # fmt: skip
        self._send_record(
            topics.telemetry(self.fleet, self.device_id, "inference"), msg, seqs, wait
        )
        return list(seqs)

    def send_health(self, **fields: object) -> int:
        """One health/1 record."""
        env = self._env()
        msg = Health(uptime_s=12.5, agent_version="test-1.0", **fields, **env)  # type: ignore[arg-type]
        self._send_record(
            topics.telemetry(self.fleet, self.device_id, "health"), msg, (msg.seq,), True
        )
        return msg.seq

    def send_event(self, kind: str = "boot", message: str = "hello") -> int:
        """One event/1 record."""
        msg = Event(kind=kind, message=message, **self._env())  # type: ignore[arg-type]
        self._send_record(topics.event(self.fleet, self.device_id, kind), msg, (msg.seq,), True)
        return msg.seq

    def send_ack(self, cmd: Envelope, status: str, reason: str | None = None) -> int:
        """Ack a received command (cmd-ack/1 record)."""
        name = str(type(cmd).__struct_config__.tag).split("/")[0]
        msg = CommandAck(
            command_id=cmd.command_id, command=name, status=status, reason=reason,  # type: ignore[attr-defined]
            **self._env(),  # type: ignore[arg-type]
        )  # fmt: skip
        self._send_record(
            topics.command_ack(self.fleet, self.device_id, name), msg, (msg.seq,), True
        )
        return msg.seq

    def resend_unacked(self) -> int:
        """Resend every un-committed record (what an agent does after a timeout)."""
        with self._lock:
            pending = list(self.outbox.values())
        for topic, payload, _seqs in pending:
            self.publish_raw(topic, payload, wait=False)
        return len(pending)

    def replay_all(self) -> int:
        """Put every record ever sent back in the outbox and resend it (lost commit-acks)."""
        with self._lock:
            self.outbox.update(self.sent)
            self.committed.clear()
        return self.resend_unacked()

    # -- receiving -------------------------------------------------------------------------
    def _on_message(self, _c: mqtt.Client, _u: object, m: mqtt.MQTTMessage) -> None:
        msg = codec.decode(m.payload)
        with self._lock:
            if isinstance(msg, Commit):
                self.commits.append(msg)
                covered = {
                    s
                    for r in msg.ranges
                    if r.boot_id == self.boot_id
                    for s in range(r.first, r.last + 1)
                }
                self.committed |= covered
                for first, (_t, _p, seqs) in list(self.outbox.items()):
                    if all(s in covered or s in self.committed for s in seqs):
                        del self.outbox[first]
            else:
                self.commands.append(msg)
            self._lock.notify_all()

    def wait(self, pred: Callable[[], bool], timeout: float = 15.0) -> bool:
        """Wait until ``pred()`` holds (evaluated under the device's lock)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not pred():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(min(left, 0.2))
            return True

    def wait_outbox_empty(self, timeout: float = 15.0) -> bool:
        """Wait until every record sent is committed."""
        return self.wait(lambda: not self.outbox, timeout)

    def close(self, *, clean: bool = True) -> None:
        """Disconnect (clean: no LWT) and stop the network thread."""
        if clean:
            self.client.disconnect()
        else:
            sock = self.client.socket()
            if sock is not None:
                sock.close()
        self.client.loop_stop()
