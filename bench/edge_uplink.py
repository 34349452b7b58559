"""Results/s through the outbox (durably stored) and the uplink until commit-acked, vs raw paho.

Same run, same Mosquitto: (a) raw paho-mqtt publishing one QoS 1 message per result and waiting
for every PUBACK; (b) the agent's Uplink: results queued, written to the SQLite outbox
(synchronous=FULL), batched, published at QoS 1, stored by a committing ingest and deleted on its
Commit. (b) does strictly more (durability and an end-to-end ack), so the target is >= 0.8x.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import paho.mqtt.client as mqtt
from _common import emit
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.commit_acker import CommitAcker  # type: ignore[import-not-found]

from edgefleet.cloud.broker import MosquittoBroker
from edgefleet.edge.config import MqttConfig, UplinkConfig
from edgefleet.edge.outbox import Outbox
from edgefleet.edge.pipeline import Result
from edgefleet.edge.sequencer import Sequencer
from edgefleet.edge.transport.mqtt import MqttTransport, Will
from edgefleet.edge.uplink import Uplink
from edgefleet.protocol import topics
from edgefleet.protocol.codec import JSON, decode
from edgefleet.protocol.messages import Commit, InferenceBatch, InferenceRecord

N = 20_000
PER_CHUNK = 8


def _result(i: int) -> Result:
    return Result(float(i), [0.25, 0.75], "fault", 0.75, 0.01)


def raw_paho(port: int) -> float:
    done = threading.Event()
    acked = [0]

    def on_publish(*_a: object) -> None:
        acked[0] += 1
        if acked[0] == N:
            done.set()

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="raw-1")
    c.on_publish = on_publish
    c.max_inflight_messages_set(20)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port)
    c.loop_start()
    topic = topics.telemetry("default", "raw-1", "inference")
    t0 = time.perf_counter()
    for i in range(N):
        r = _result(i)
        msg = InferenceBatch(
            device_id="raw-1",
            boot_id="b",
            seq=i + 1,
            sent_at=time.time(),
            model="m",
            model_version="1.0.0",
            records=[
                InferenceRecord(
                    seq=i + 1,
                    t=r.t,
                    outputs=r.outputs,
                    label=r.label,
                    score=r.score,
                    latency_ms=r.latency_ms,
                )
            ],
        )
        c.publish(topic, JSON.encode(msg), qos=1)
    assert done.wait(120), acked[0]
    elapsed = time.perf_counter() - t0
    c.disconnect()
    c.loop_stop()
    return N / elapsed


async def through_uplink(port: int, workdir: Path) -> tuple[float, int]:
    db = ThreadPoolExecutor(1)
    box = Outbox(workdir / "outbox.sqlite", max_records=10 * N)
    seq = Sequencer()
    box.register_boot(seq.boot_id)
    up = Uplink(
        UplinkConfig(batch_max=200, flush_interval_s=0.02),
        box,
        None,
        seq,
        JSON,
        fleet="default",
        device_id="up-1",
        db_executor=db,
    )

    class Handler:
        def on_connected(self) -> None:
            up.on_connected()

        def on_disconnected(self) -> None:
            pass

        def on_message(self, _topic: str, payload: bytes) -> None:
            msg = decode(payload)
            if isinstance(msg, Commit):
                asyncio.get_running_loop().create_task(up.on_commit(msg))

        def on_published(self) -> None:
            up.wake()

    status = topics.status("default", "up-1")
    transport = MqttTransport(
        MqttConfig(port=port),
        "up-1",
        Handler(),
        subscriptions=topics.device_command_filters("default", "up-1"),
        will=Will(status, b"{}"),
    )
    up.transport = transport
    ttask = asyncio.create_task(transport.run())
    while not transport.connected:  # noqa: ASYNC110 - polling a flag in a benchmark
        await asyncio.sleep(0.01)
    utask = asyncio.create_task(up.run())
    t0 = time.perf_counter()
    for i in range(0, N, PER_CHUNK):
        up.add_results("m", "1.0.0", [_result(i + k) for k in range(PER_CHUNK)])
        if i % 512 == 0:
            await asyncio.sleep(0)  # the agent yields between chunks too
    while up.counters.committed < N:  # noqa: ASYNC110
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - t0
    up.stop()
    await transport.close()
    ttask.cancel()
    await asyncio.gather(ttask, utask, return_exceptions=True)
    messages = up.counters.published_messages
    box.close()
    db.shutdown()
    return N / elapsed, messages


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="edgefleet-uplink-"))
    broker = MosquittoBroker(work / "broker").start()
    try:
        acker = CommitAcker(broker.host, broker.port)
        raw = raw_paho(broker.port)
        ours, messages = asyncio.run(through_uplink(broker.port, work))
        stored = acker.inference_records("up-1")
        acker.close()
    finally:
        broker.stop()
    emit(
        "edge_uplink",
        {
            "results": N,
            "raw_paho_results_per_s": round(raw),
            "uplink_results_per_s": round(ours),
            "uplink_over_raw": round(ours / raw, 3),
            "uplink_messages": messages,
            "ingest_stored_records": stored,
        },
        ("paho-mqtt",),
    )


if __name__ == "__main__":
    main()
