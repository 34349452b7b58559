"""Protocol-speaking stand-ins for agents that feed the dashboard tests and the load bench.

``SimDevice`` is one device on its own MQTT connection: retained birth, an LWT the broker
publishes when the socket dies, health and inference batches with plausible values, records
kept until the cloud's commit-ack, and ``assign-model`` answered with ``received`` then
``succeeded`` (or ``refused``). ``DeviceSwarm`` publishes for many devices over a few
connections (no LWT per device), for fleets of 1,000 in one test process.
"""

from __future__ import annotations

import math
import random
import secrets
import threading
import time
from collections.abc import Sequence

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.protocol import codec, topics
from edgefleet.protocol.messages import (
    AssignModel,
    CommandAck,
    Commit,
    Envelope,
    Health,
    InferenceBatch,
    InferenceRecord,
    Status,
)

LABELS = ("normal", "normal", "normal", "bearing-wear", "imbalance")


class Telemetry:
    """Deterministic, plausible health and inference values for one device."""

    def __init__(self, device_id: str, seed: int = 0) -> None:
        self.rng = random.Random(f"{seed}:{device_id}")
        self.phase = self.rng.random() * 6.28
        self.inferences = 0
        self.started = time.time()

    def health(self, outbox_depth: int = 0, **overrides: object) -> dict[str, object]:
        """Fields of one health/1 sample."""
        r, t = self.rng, time.time()
        values: dict[str, object] = {
            "uptime_s": t - self.started,
            "cpu_percent": round(30 + 20 * math.sin(t / 7 + self.phase) + r.random() * 5, 1),
            "temperature_c": round(48 + 6 * math.sin(t / 11 + self.phase) + r.random(), 1),
            "mem_rss_mb": 60.0,
            "inferences": self.inferences,
            "latency_ms_p50": round(4 + r.random(), 2),
            "latency_ms_p95": round(7 + 2 * r.random(), 2),
            "outbox_depth": outbox_depth,
        }
        values.update(overrides)
        return values

    def records(self, seqs: Sequence[int]) -> list[InferenceRecord]:
        """One inference record per seq."""
        out = []
        for s in seqs:
            score = min(1.0, abs(self.rng.gauss(0.15, 0.12)))
            label = LABELS[self.rng.randrange(len(LABELS))] if score > 0.2 else "normal"
            out.append(
                InferenceRecord(
                    seq=s, t=time.time(), outputs=[1 - score, score], label=label,
                    score=round(score, 4), latency_ms=round(3 + self.rng.random() * 4, 3),
                )
            )  # fmt: skip
        self.inferences += len(seqs)
        return out


class SimDevice:
    """One device with its own MQTT connection, birth and LWT."""

    def __init__(
        self,
        host: str,
        port: int,
        device_id: str,
        fleet: str,
        *,
        agent_version: str = "0.1.0",
        model: tuple[str, str] | None = ("vibration", "1.0.0"),
        refuse_models: bool = False,
        seed: int = 0,
    ) -> None:
        self.device_id, self.fleet = device_id, fleet
        self.agent_version = agent_version
        self.model = model
        self.refuse_models = refuse_models
        self.boot_id = secrets.token_hex(6)
        self.telemetry = Telemetry(device_id, seed)
        self._seq = 1  # seq 0 is the birth/will envelope
        self._lock = threading.Condition()
        self.outbox: dict[int, int] = {}  # first seq -> records in the message
        self.commands: list[Envelope] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device_id)
        self.client.will_set(topics.status(fleet, device_id), self._status("offline", "lwt"),
                             qos=1, retain=True)  # fmt: skip
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.on_connect = lambda c, *_a: c.subscribe(
            [(f, 1) for f in topics.device_command_filters(fleet, device_id)]
        )
        # Keepalive 5 s: a device whose link silently dies is declared gone within ~7.5 s.
        self.client.connect(host, port, keepalive=5)
        self.client.loop_start()
        if not subscribed.wait(10):
            raise TimeoutError(f"{device_id}: no SUBACK from the broker")

    def _next(self, n: int = 1) -> list[int]:
        with self._lock:
            first = self._seq
            self._seq += n
        return list(range(first, first + n))

    def _env(self, seq: int) -> dict[str, object]:
        return {"device_id": self.device_id, "boot_id": self.boot_id, "seq": seq,
                "sent_at": time.time()}  # fmt: skip

    def _status(self, state: str, reason: str) -> bytes:
        name, version = self.model or (None, None)
        msg = Status(state=state, reason=reason, agent_version=self.agent_version,  # type: ignore[arg-type]
                     model=name, model_version=version, **self._env(0))  # type: ignore[arg-type]  # fmt: skip
        return codec.encode(msg)

    def _publish(self, topic: str, msg: Envelope, records: int = 1) -> None:
        with self._lock:
            self.outbox[msg.seq] = records
        self.client.publish(topic, codec.encode(msg), qos=1).wait_for_publish(10)

    def birth(self) -> None:
        """Publish the retained online status."""
        self.client.publish(
            topics.status(self.fleet, self.device_id), self._status("online", "start"),
            qos=1, retain=True,
        ).wait_for_publish(10)  # fmt: skip

    def send_health(self, **overrides: object) -> None:
        """One health/1 sample."""
        (seq,) = self._next()
        depth = len(self.outbox)
        name, version = self.model or (None, None)
        msg = Health(agent_version=self.agent_version, model=name, model_version=version,
                     **self.telemetry.health(depth, **overrides), **self._env(seq))  # type: ignore[arg-type]  # fmt: skip
        self._publish(topics.telemetry(self.fleet, self.device_id, "health"), msg)

    def send_inference(self, n: int = 5) -> None:
        """One inference/1 batch of ``n`` records."""
        seqs = self._next(n)
        name, version = self.model or ("vibration", "1.0.0")
        msg = InferenceBatch(model=name, model_version=version,
                             records=self.telemetry.records(seqs), **self._env(seqs[0]))  # type: ignore[arg-type]  # fmt: skip
        self._publish(topics.telemetry(self.fleet, self.device_id, "inference"), msg, n)

    def _ack(self, cmd: AssignModel, status: str, reason: str | None = None) -> None:
        (seq,) = self._next()
        msg = CommandAck(command_id=cmd.command_id, command="assign-model", status=status,  # type: ignore[arg-type]
                         reason=reason, **self._env(seq))  # type: ignore[arg-type]  # fmt: skip
        topic = topics.command_ack(self.fleet, self.device_id, "assign-model")
        # From paho's network thread: publish without waiting (waiting there would deadlock).
        with self._lock:
            self.outbox[seq] = 1
        self.client.publish(topic, codec.encode(msg), qos=1)

    def _on_message(self, _c: mqtt.Client, _u: object, m: mqtt.MQTTMessage) -> None:
        msg = codec.decode(m.payload)
        if isinstance(msg, Commit):
            covered = {(r.boot_id, s) for r in msg.ranges for s in range(r.first, r.last + 1)}
            with self._lock:
                for first in [f for f in self.outbox if (self.boot_id, f) in covered]:
                    del self.outbox[first]
                self._lock.notify_all()
            return
        with self._lock:
            self.commands.append(msg)
            self._lock.notify_all()
        if isinstance(msg, AssignModel):
            self._ack(msg, "received")
            if self.refuse_models:
                self._ack(msg, "refused", "bad-signature")
            else:
                self.model = (msg.model, msg.version)
                self._ack(msg, "succeeded")
                birth = self._status("online", "start")
                self.client.publish(topics.status(self.fleet, self.device_id), birth, 1, True)

    def wait_committed(self, timeout: float = 15.0) -> bool:
        """Wait until the cloud has committed everything this device sent."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self.outbox:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(min(left, 0.2))
        return True

    def kill(self) -> None:
        """Die without DISCONNECT: the broker notices the dead socket and publishes the LWT."""
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.close()

    def close(self) -> None:
        """Publish a clean offline status and disconnect."""
        self.client.publish(topics.status(self.fleet, self.device_id),
                            self._status("offline", "shutdown"), qos=1, retain=True)  # fmt: skip
        self.client.disconnect()
        self.client.loop_stop()


class DeviceSwarm:
    """Many devices over a few connections: births, then rounds of health and inference."""

    def __init__(
        self, host: str, port: int, fleet: str, count: int, *, connections: int = 4,
        prefix: str = "dev", seed: int = 0, max_inflight: int = 200,
    ) -> None:  # fmt: skip
        self.fleet = fleet
        self.ids = [f"{prefix}-{i:04d}" for i in range(count)]
        self.boot_id = secrets.token_hex(6)
        self.telemetry = {d: Telemetry(d, seed) for d in self.ids}
        self.seqs = dict.fromkeys(self.ids, 1)
        self.clients: list[mqtt.Client] = []
        for i in range(connections):
            c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{fleet}-swarm-{i}")
            c.max_inflight_messages_set(max_inflight)
            c.connect(host, port, keepalive=30)
            c.loop_start()
            self.clients.append(c)
        self.published = 0

    def _client(self, i: int) -> mqtt.Client:
        return self.clients[i % len(self.clients)]

    def _env(self, device: str, n: int = 1) -> dict[str, object]:
        seq = self.seqs[device]
        self.seqs[device] = seq + n
        return {"device_id": device, "boot_id": self.boot_id, "seq": seq, "sent_at": time.time()}

    def births(
        self, agents: Sequence[str] = ("0.1.0",), models: Sequence[str] = ("1.0.0",)
    ) -> None:
        """Retained online status for every device (versions cycle through the lists)."""
        infos = []
        for i, d in enumerate(self.ids):
            msg = Status(state="online", reason="start", agent_version=agents[i % len(agents)],
                         model="vibration", model_version=models[i % len(models)],
                         device_id=d, boot_id=self.boot_id, seq=0, sent_at=time.time())  # fmt: skip
            infos.append(self._client(i).publish(topics.status(self.fleet, d), codec.encode(msg),
                                                 qos=1, retain=True))  # fmt: skip
        for info in infos:
            info.wait_for_publish(30)

    def round(self, inference_records: int = 5, health: bool = True, wait: bool = True) -> int:
        """One health sample and one inference batch per device; returns records sent."""
        infos, sent = [], 0
        for i, d in enumerate(self.ids):
            tel, c = self.telemetry[d], self._client(i)
            if health:
                msg: Envelope = Health(**tel.health(), **self._env(d))  # type: ignore[arg-type]
                infos.append(
                    c.publish(topics.telemetry(self.fleet, d, "health"), codec.encode(msg), qos=1)
                )
                sent += 1
            if inference_records:
                env = self._env(d, inference_records)
                seqs = range(int(env["seq"]), int(env["seq"]) + inference_records)  # type: ignore[call-overload]
                batch = InferenceBatch(model="vibration", model_version="1.0.0",
                                       records=tel.records(list(seqs)), **env)  # type: ignore[arg-type]  # fmt: skip
                infos.append(
                    c.publish(
                        topics.telemetry(self.fleet, d, "inference"), codec.encode(batch), qos=1
                    )
                )
                sent += inference_records
        if wait:
            for info in infos:
                info.wait_for_publish(60)
        self.published += sent
        return sent

    def close(self) -> None:
        """Disconnect every connection."""
        for c in self.clients:
            c.disconnect()
            c.loop_stop()
