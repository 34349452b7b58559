"""What authenticated commands and record MACs cost, against no check, in the same run.

Agent side: the time to check one command (decode, topic check and the command guard) with an
Ed25519 signature and with an HMAC (a commit-ack by the device's record key), next to decode
and topic check alone. Cloud side: signing a commit-ack each way, and MACing a record batch.
Ingest: messages per second one ingest worker drains from a broker backlog into SQLite with
record MACs checked and commit-acks MAC'd, over the same with unsigned records (interleaved
pairs, median ratio; bench/cloud_ingest.py's method).

Metrics: verify_us_per_command (Ed25519, agent), verify_us_per_commit_hmac,
decode_us_per_command (no check), sign_us_per_commit_ed25519, sign_us_per_commit_hmac,
seal_us_per_batch, ingest_over_unsigned (target >= 0.95), and
ingest_ed25519_commits_over_unsigned (every commit-ack signed with Ed25519 instead), and the
stage's CPU per message by variant (stage_cpu_mac_over_unsigned: CPU, not throughput);
core_unsigned_over_mac: the same stage work in this process alone (the least noisy figure:
the throughput ratios swing with whatever else the machine runs).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import sys
import tempfile
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
from edgefleet.cloud.commandsigner import CommandSigner, ensure_command_key
from edgefleet.cloud.ingest import IngestSettings, IngestWorker
from edgefleet.cloud.node import CloudNode
from edgefleet.cloud.store import open_store
from edgefleet.cloud.trust import RecordKeys
from edgefleet.protocol import codec, topics
from edgefleet.protocol.commandauth import CommandGuard, seal_record
from edgefleet.protocol.messages import (
    Commit,
    CommitRange,
    ReadingBatch,
    ReadingRecord,
    SetConfig,
)
from edgefleet.protocol.signing import load_public_key

PUBLISHERS = 2
MESSAGES_PER_PUBLISHER = int(os.environ.get("BENCH_MESSAGES", "10000"))
RECORDS_PER_MESSAGE = 5
REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))
MICRO_N = int(os.environ.get("BENCH_MICRO", "3000"))
TOTAL = PUBLISHERS * MESSAGES_PER_PUBLISHER
# CPU microseconds per message of the ingest's stage (decode, checks, store), by variant: less
# sensitive than throughput to other work on a shared machine.
STAGE_CPU_US: dict[str, list[float]] = {}


def _per_us(fn: Any, items: list[Any]) -> float:
    """Median over 3 passes of microseconds per call of ``fn`` over ``items``."""
    passes = []
    for _ in range(3):
        t0 = time.perf_counter()
        for it in items:
            fn(it)
        passes.append((time.perf_counter() - t0) / len(items) * 1e6)
    return statistics.median(passes)


def micro(workdir: Path) -> dict[str, float]:
    """Per-command and per-batch costs on this machine."""
    priv, pub, _ = ensure_command_key(workdir)
    signer = CommandSigner(priv)
    device, key = "bench-1", os.urandom(32)
    cmd_topic = topics.command("default", device, "set-config")
    commit_topic = topics.command("default", device, "commit")
    cfg = SetConfig(
        device_id="cloud", boot_id="cloud", seq=1, sent_at=time.time(), command_id="c1",
        values={"health.interval_s": 5.0},
    )  # fmt: skip
    commit = Commit(
        device_id="cloud", boot_id="cloud", seq=1, sent_at=time.time(),
        ranges=[CommitRange("b0", 100, 199)],
    )  # fmt: skip
    out: dict[str, float] = {}
    n = MICRO_N
    out["sign_us_per_commit_ed25519"] = _per_us(
        lambda _i: signer.sign(commit_topic, commit), list(range(n))
    )
    out["sign_us_per_commit_hmac"] = _per_us(
        lambda _i: signer.sign(commit_topic, commit, mac_key=key), list(range(n))
    )
    # Fresh signatures each pass: the guard's replay window refuses a payload seen before.
    plain = [codec.encode(cfg)] * n
    signed = [[signer.sign(cmd_topic, cfg) for _ in range(n)] for _ in range(3)]
    macd = [[signer.sign(commit_topic, commit, mac_key=key) for _ in range(n)] for _ in range(3)]

    def decode_only(payload: bytes, topic: str = cmd_topic) -> None:
        codec.check_topic(topics.parse(topic), codec.decode(payload))

    out["decode_us_per_command"] = _per_us(decode_only, plain)
    guard = CommandGuard(device, [load_public_key(pub)], key)

    def checked(payload: bytes, topic: str = cmd_topic) -> None:
        msg = codec.decode(payload)
        codec.check_topic(topics.parse(topic), msg)
        guard.check(topic, payload, msg)

    def timed(batches: list[list[bytes]], topic: str) -> float:
        times = []
        for batch in batches:
            t0 = time.perf_counter()
            for p in batch:
                checked(p, topic)
            times.append((time.perf_counter() - t0) / len(batch) * 1e6)
        return statistics.median(times)

    out["verify_us_per_command"] = timed(signed, cmd_topic)
    out["verify_us_per_commit_hmac"] = timed(macd, commit_topic)
    out["commands_verified_per_s"] = 1e6 / out["verify_us_per_command"]
    batch = ReadingBatch(
        device_id=device, boot_id="b0", seq=0, sent_at=time.time(), channels=["x", "y", "z"],
        records=[ReadingRecord(seq=i, t=time.time(), values=[1.0, 2.0, 3.0]) for i in range(100)],
    )  # fmt: skip
    enc = codec.encode(batch)
    rec_topic = topics.telemetry("default", device, "accel")
    out["seal_us_per_batch"] = _per_us(lambda _i: seal_record(key, rec_topic, enc, device), [0] * n)
    out["encode_us_per_batch"] = _per_us(lambda _i: codec.encode(batch), [0] * n)
    return {k: round(v, 2) for k, v in out.items()}


def core_ratio(workdir: Path) -> dict[str, float]:
    """The ingest stage's own work per message (check, decode, batch, store), in process.

    Alternating unsigned and MAC'd chunks of 2,000 messages into one IngestCore each and a
    fresh SQLite file each: no broker and no other process, so the least noisy comparison.
    """
    from edgefleet.cloud.ingest.base import Chunk
    from edgefleet.cloud.ingest.core import IngestCore

    key = os.urandom(32)
    times: dict[str, list[float]] = {"plain": [], "mac": []}
    for i in range(2 * REPEATS + 2):
        variant = "plain" if i % 2 == 0 else "mac"
        store = open_store(f"sqlite:///{workdir}/core-{i}.db")
        dev = f"c{i}"
        if variant == "mac":
            RecordKeys(store).register(dev, key)
        topic = topics.telemetry("f", dev, "accel")
        chunk: list[tuple[bytes, bytes | bytearray]] = []
        for m in range(2000):
            recs = [
                ReadingRecord(seq=m * 5 + r, t=time.time(), values=[1.0, 2.0, 3.0])
                for r in range(5)
            ]
            msg = ReadingBatch(
                device_id=dev, boot_id="b", seq=m * 5, sent_at=time.time(),
                channels=["x", "y", "z"], records=recs,
            )  # fmt: skip
            payload = codec.encode(msg)
            if variant == "mac":
                payload = seal_record(key, topic, payload, dev)
            chunk.append((topic.encode(), payload))
        settings = IngestSettings(
            broker_url="mqtt://unused:1883", throttle_rate=1e9, throttle_burst=1e9
        )
        core = IngestCore(settings, store)
        t0 = time.process_time()
        for j in range(0, len(chunk), 500):
            core.feed(Chunk(time.time(), chunk[j : j + 500]))
            core.flush()
        spent = time.process_time() - t0
        store.close()
        if i >= 2:  # the first pair warms up imports and the page cache
            times[variant].append(spent / len(chunk) * 1e6)
    plain, mac = statistics.median(times["plain"]), statistics.median(times["mac"])
    return {
        "core_cpu_us_per_msg_unsigned": round(plain, 2),
        "core_cpu_us_per_msg_mac": round(mac, 2),
        "core_unsigned_over_mac": round(plain / mac, 3),
    }


def _publisher(host: str, port: int, fleet: str, index: int, key: bytes | None, go: Any) -> None:
    device = f"{fleet}-p{index}"
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
        payload = codec.encode(msg)
        payloads.append(seal_record(key, topic, payload, device) if key else payload)
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


def run_ingest(
    broker: MosquittoBroker,
    db_url: str,
    command_key: Path | None,
    *,
    macs: bool = True,
    variant: str = "",
) -> float:
    """Messages per second one worker drains from a backlog.

    No key: unsigned records, unsigned commit-acks (no check). A key and ``macs``: records
    MAC'd and checked, commit-acks MAC'd. A key without ``macs``: unsigned records, commit-acks
    signed with Ed25519 (what every commit would cost without per-device keys).
    """
    fleet = f"ca{uuid.uuid4().hex[:8]}"
    node = CloudNode()
    store = open_store(db_url)
    keys: list[bytes | None] = [None] * PUBLISHERS
    if command_key is not None and macs:
        rk = RecordKeys(store)
        made = [os.urandom(32) for _ in range(PUBLISHERS)]
        for i, k in enumerate(made):
            rk.register(f"{fleet}-p{i}", k)
        keys = list(made)
    settings = IngestSettings(
        broker_url=broker.url, fleet=fleet, client_id=f"{fleet}-w0", throttle_rate=1e9,
        throttle_burst=1e9, command_key=str(command_key) if command_key else None,
    )  # fmt: skip
    IngestWorker(replace(settings, mode="thread"), store, node).start().stop()
    ctx = mp.get_context("fork")
    go = ctx.Event()
    procs = [
        ctx.Process(target=_publisher, args=(broker.host, broker.port, fleet, i, keys[i], go))
        for i in range(PUBLISHERS)
    ]
    for p in procs:
        p.start()
    time.sleep(0.5)
    go.set()
    for p in procs:
        p.join()
    w = IngestWorker(settings, open_store(db_url), node)
    w.start()
    deadline = time.monotonic() + 300
    want = TOTAL * RECORDS_PER_MESSAGE
    while w.stats.records + w.stats.quarantined * RECORDS_PER_MESSAGE < want:
        if time.monotonic() > deadline:
            break
        time.sleep(0.005)
    end = time.perf_counter()
    t0 = w.stats.connected_at or end
    got = w.stats.messages
    bad = w.stats.quarantined
    STAGE_CPU_US.setdefault(variant, []).append(w.stats.stage_cpu_s / max(got, 1) * 1e6)
    w.stop()
    w.store.close()
    store.close()
    if bad:
        raise SystemExit(f"{bad} messages were quarantined: the MACs are wrong")
    return got / (end - t0)


def main() -> None:
    metrics: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        metrics.update(micro(Path(tmp) / "micro"))
        metrics.update(core_ratio(Path(tmp)))
        print(metrics)
        priv, _pub, _ = ensure_command_key(Path(tmp) / "cloud")
        broker = MosquittoBroker(Path(tmp) / "broker").start()
        try:
            # A fresh database per run: a growing one would favour whichever ran first.
            def db() -> str:
                return f"sqlite:///{tmp}/bench-{uuid.uuid4().hex[:8]}.db"

            run_ingest(broker, db(), None)  # warm-up
            ratios, plain_rates, signed_rates, ed_ratios = [], [], [], []
            for i in range(REPEATS):
                # Alternate the order within each triple, so drift favours no variant.
                order = ["plain", "mac", "ed"] if i % 2 == 0 else ["ed", "mac", "plain"]
                rate: dict[str, float] = {}
                for variant in order:
                    key = None if variant == "plain" else priv
                    rate[variant] = run_ingest(
                        broker, db(), key, macs=variant == "mac", variant=variant
                    )
                plain, signed, ed = rate["plain"], rate["mac"], rate["ed"]
                plain_rates.append(plain)
                signed_rates.append(signed)
                ratios.append(signed / plain)
                ed_ratios.append(ed / plain)
                print(
                    f"unsigned {plain:.0f}/s  MACs {signed:.0f}/s ({signed / plain:.3f})  "
                    f"Ed25519 commit-acks {ed:.0f}/s ({ed / plain:.3f})"
                )
            metrics["ingest_over_unsigned"] = round(statistics.median(ratios), 3)
            metrics["ingest_over_unsigned_spread"] = {
                "min": round(min(ratios), 3),
                "max": round(max(ratios), 3),
            }
            metrics["ingest_ed25519_commits_over_unsigned"] = round(statistics.median(ed_ratios), 3)
            cpu = {k: statistics.median(v) for k, v in STAGE_CPU_US.items() if k}
            for k, v in cpu.items():
                metrics[f"stage_cpu_us_per_msg_{k}"] = round(v, 1)
            metrics["stage_cpu_mac_over_unsigned"] = round(cpu["mac"] / cpu["plain"], 3)
            metrics["ingest_unsigned_per_s"] = round(statistics.median(plain_rates), 1)
            metrics["ingest_signed_per_s"] = round(statistics.median(signed_rates), 1)
        finally:
            broker.stop()
    emit("command_auth", metrics, ("msgspec", "cryptography", "paho-mqtt"))


if __name__ == "__main__":
    main()
