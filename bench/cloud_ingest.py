"""Ingest throughput: N publisher processes -> Mosquitto -> ingest -> store, with commit-acks.

The publishers first fill the broker's queue for the (offline, persistent) subscriber; then the
subscriber connects and the clock runs until it has drained everything. That times the
consumer alone: on a 2-core machine, publishers running at the same time would take the CPU
the consumer needs and the ratio would measure the scheduler instead.

Compared in the same run with a raw paho subscriber that only counts messages. Metrics:
ingest_over_raw_sqlite (target >= 0.85, 1 worker), ingest_over_raw_postgres, and
ingest_per_s_workers_1|2|3 (shared-subscription workers, PostgreSQL store). The receive loops
(paho's own loop vs. read-until-empty) are measured too: loop_paho_per_s, loop_drain_per_s.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit

from edgefleet.cloud.broker import MosquittoBroker
from edgefleet.cloud.ingest import IngestSettings, IngestWorker, LoopKind, WorkerMode
from edgefleet.cloud.node import CloudNode
from edgefleet.cloud.store import open_store
from edgefleet.protocol import codec, topics
from edgefleet.protocol.messages import ReadingBatch, ReadingRecord

PUBLISHERS = 2
MESSAGES_PER_PUBLISHER = int(os.environ.get("BENCH_MESSAGES", "10000"))
RECORDS_PER_MESSAGE = 5
REPEATS = int(os.environ.get("BENCH_REPEATS", "5"))
# CPU microseconds per message: the raw subscriber, ingest's network process and its stage.
CPU_US: dict[str, list[float]] = {"raw": [], "network": [], "stage": []}
PG_ADMIN = os.environ.get("EDGEFLEET_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def _publisher(host: str, port: int, fleet: str, index: int, go: Any) -> None:
    device = f"p{index}"
    boot = uuid.uuid4().hex[:12]
    topic = topics.telemetry(fleet, device, "accel")
    payloads = []
    for m in range(MESSAGES_PER_PUBLISHER):
        first = m * RECORDS_PER_MESSAGE
        recs = [
            ReadingRecord(seq=first + r, t=time.time(), values=[1.0, 2.0, 3.0])
            for r in range(RECORDS_PER_MESSAGE)
        ]
        msg = ReadingBatch(
            device_id=device, boot_id=boot, seq=first, sent_at=time.time(),
            channels=["x", "y", "z"], records=recs,
        )  # fmt: skip
        payloads.append(codec.encode(msg))
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{fleet}-{device}")
    c.max_inflight_messages_set(200)
    c.max_queued_messages_set(0)
    c.connect(host, port)
    c.loop_start()
    go.wait()
    info = None
    for p in payloads:
        info = c.publish(topic, p, qos=1)
    assert info is not None
    info.wait_for_publish(120)
    c.disconnect()
    c.loop_stop()


def _publish_all(broker: MosquittoBroker, fleet: str) -> tuple[list[Any], Any]:
    ctx = mp.get_context("fork")
    go = ctx.Event()
    procs = [
        ctx.Process(target=_publisher, args=(broker.host, broker.port, fleet, i, go))
        for i in range(PUBLISHERS)
    ]
    for p in procs:
        p.start()
    time.sleep(0.5)  # let them encode and connect before the clock starts
    return procs, go


TOTAL = PUBLISHERS * MESSAGES_PER_PUBLISHER


def _publish_backlog(broker: MosquittoBroker, fleet: str) -> None:
    """Publish every message into the (offline) subscribers' broker queues and wait."""
    procs, go = _publish_all(broker, fleet)
    go.set()
    for p in procs:
        p.join()


def run_raw(broker: MosquittoBroker) -> float:
    """Messages per second a paho subscriber that only counts drains from a backlog."""
    fleet = f"raw{uuid.uuid4().hex[:8]}"
    count = 0
    done = threading.Event()
    subscribed = threading.Event()

    def on_message(*_a: object) -> None:
        nonlocal count
        count += 1
        if count >= TOTAL:
            done.set()

    def client() -> mqtt.Client:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"raw-{fleet}", protocol=mqtt.MQTTv5)
        c.on_message = on_message
        c.on_subscribe = lambda *_a: subscribed.set()
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 3600
        c.connect(broker.host, broker.port, clean_start=False, properties=props)
        return c

    c = client()
    c.subscribe([(f, 1) for f in topics.uplink_filters(fleet)])
    c.loop_start()
    subscribed.wait(10)
    c.disconnect()
    c.loop_stop()
    _publish_backlog(broker, fleet)
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    c = client()
    c.loop_start()
    done.wait(300)
    elapsed = time.perf_counter() - t0
    CPU_US["raw"].append((time.process_time() - cpu0) / max(count, 1) * 1e6)
    c.disconnect()
    c.loop_stop()
    return count / elapsed


def run_ingest(
    broker: MosquittoBroker,
    db_url: str,
    workers: int = 1,
    loop: LoopKind = "drain",
    mode: WorkerMode = "process",
) -> float:
    """Messages per second ``workers`` ingest workers drain from a backlog, store and commit."""
    fleet = f"ing{uuid.uuid4().hex[:8]}"
    node = CloudNode()
    base = IngestSettings(
        broker_url=broker.url,
        fleet=fleet,
        loop=loop,
        mode=mode,
        throttle_rate=1e9,
        throttle_burst=1e9,
    )
    group = f"g{fleet}" if workers > 1 else None
    settings = [replace(base, client_id=f"{fleet}-w{i}", share_group=group) for i in range(workers)]
    store = open_store(db_url)
    for st in settings:  # create the persistent sessions, then go offline
        IngestWorker(replace(st, mode="thread"), store, node).start().stop()
    _publish_backlog(broker, fleet)
    made = [IngestWorker(st, open_store(db_url), node) for st in settings]
    cpu0 = time.process_time()
    for w in made:
        w.start()
    deadline = time.monotonic() + 300
    while sum(w.stats.records for w in made) < TOTAL * RECORDS_PER_MESSAGE:
        if time.monotonic() > deadline:
            break
        time.sleep(0.005)
    end = time.perf_counter()
    # The clock starts at the first CONNECT, as the raw subscriber's does: starting a stage
    # process before that is set-up, not consuming.
    t0 = min(w.stats.connected_at or end for w in made)
    got = sum(w.stats.messages for w in made)
    if workers == 1 and loop == "drain" and mode == "process":
        # This process runs only the network thread (and this loop's 5 ms polls).
        CPU_US["network"].append((time.process_time() - cpu0) / max(got, 1) * 1e6)
        CPU_US["stage"].append(made[0].stats.stage_cpu_s / max(got, 1) * 1e6)
    for w in made:
        w.stop()
        w.store.close()
    store.close()
    return got / (end - t0)


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3)}  # fmt: skip


def _pg_db() -> tuple[str, str] | None:
    try:
        import psycopg

        name = f"edgefleet_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        return f"{PG_ADMIN.rsplit('/', 1)[0]}/{name}", name
    except Exception as exc:
        print(f"PostgreSQL not available ({exc}); skipping its metrics", file=sys.stderr)
        return None


def _drop_pg(name: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    metrics: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        broker = MosquittoBroker(Path(tmp) / "broker").start()
        try:
            db = f"sqlite:///{tmp}/bench.db"
            run_raw(broker)  # warm-up: broker, page cache, imports
            raws, drains, ratios = [], [], []
            # Interleaved pairs: the machine is shared, so a ratio is taken between runs
            # adjacent in time and the median of those ratios is reported.
            for _ in range(REPEATS):
                raw = run_raw(broker)
                drain = run_ingest(broker, db, 1, "drain", "process")
                raws.append(raw)
                drains.append(drain)
                ratios.append(drain / raw)
                print(f"raw {raw:.0f}/s  sqlite ingest {drain:.0f}/s  ratio {drain / raw:.3f}")
            thread = run_ingest(broker, db, 1, "drain", "thread")
            paho = run_ingest(broker, db, 1, "paho", "process")
            print(f"thread mode {thread:.0f}/s  paho loop {paho:.0f}/s")
            metrics["ingest_over_raw_sqlite"] = round(statistics.median(ratios), 3)
            metrics["ingest_over_raw_sqlite_spread"] = _spread(ratios)
            metrics["raw_per_s"] = round(statistics.median(raws), 1)
            metrics["raw_per_s_spread"] = _spread(raws)
            metrics["loop_drain_per_s"] = round(statistics.median(drains), 1)
            metrics["loop_drain_per_s_spread"] = _spread(drains)
            for part, values in CPU_US.items():
                metrics[f"cpu_us_per_msg_{part}"] = round(statistics.median(values), 1)
            metrics["loop_paho_per_s"] = round(paho, 1)
            metrics["ingest_thread_mode_per_s"] = round(thread, 1)
            pg = _pg_db()
            if pg is not None:
                url, name = pg
                try:
                    for n in (1, 2, 3):
                        rate = run_ingest(broker, url, n)
                        metrics[f"ingest_per_s_workers_{n}"] = round(rate, 1)
                        print(f"postgres, {n} worker process(es): {rate:.0f}/s")
                    metrics["ingest_over_raw_postgres"] = round(
                        metrics["ingest_per_s_workers_1"] / metrics["raw_per_s"], 3
                    )
                    rate = run_ingest(broker, url, 3, mode="thread")
                    metrics["ingest_per_s_workers_3_thread_mode"] = round(rate, 1)
                    print(f"postgres, 3 worker threads: {rate:.0f}/s")
                finally:
                    _drop_pg(name)
        finally:
            broker.stop()
    metrics["messages"] = TOTAL
    metrics["records_per_message"] = RECORDS_PER_MESSAGE
    metrics["publishers"] = PUBLISHERS
    metrics["repeats"] = REPEATS
    metrics["cpus"] = os.cpu_count() or 0
    emit("cloud_ingest", metrics, ("paho-mqtt", "sqlite-utils", "psycopg", "msgspec"))


if __name__ == "__main__":
    main()
