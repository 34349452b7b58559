"""Faults on a real Mosquitto: broker SIGKILL, agent SIGKILL, a full outbox, the LWT."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from support.commit_acker import CommitAcker
from support.edge_agent import AgentProcess, AgentThread, agent_toml, make_config
from support.mqtt import Probe

from edgefleet.edge.outbox import Outbox
from edgefleet.protocol import topics
from edgefleet.protocol.codec import decode
from edgefleet.protocol.messages import Health, Status


def _complete(acker: CommitAcker, device: str, boots: dict[str, int]) -> bool:
    got = acker.seqs(device)
    return all(got.get(b, set()) == set(range(1, last + 1)) for b, last in boots.items())


def _boots(path: Path) -> tuple[dict[str, int], int, int]:
    box = Outbox(path, readonly=True)
    try:
        st = box.stats()
    finally:
        box.close()
    return st.boots, st.depth, st.drops


@pytest.mark.slow
def test_broker_sigkill_loses_nothing(mosquitto_factory, tmp_path, good_bundle, trusted_pub):
    broker = mosquitto_factory()
    acker = CommitAcker(broker.host, broker.port)
    cfg = make_config(
        agent_toml(
            tmp_path / "d",
            broker.port,
            device="bk-1",
            bundle=good_bundle,
            keys=[trusted_pub],
            source="limit_samples = 1600",
        )
    )
    runner = AgentThread(cfg)
    try:
        runner.wait_ready()
        assert acker.wait_for(lambda a: a.inference_records("bk-1") >= 5)
        broker.kill()
        time.sleep(0.3)  # the agent keeps producing into its outbox while the broker is down
        broker.start()
        assert acker.wait_for(lambda a: a.inference_records("bk-1") >= 40, timeout=30)
        assert runner.agent.source_done.is_set() or acker.wait_for(
            lambda _a: runner.agent.source_done.is_set(), timeout=30
        )

        def drained(a: CommitAcker) -> bool:
            boots, depth, _ = _boots(cfg.outbox_path)
            return depth == 0 and runner.agent.uplink.pending == 0 and _complete(a, "bk-1", boots)

        assert acker.wait_for(drained, timeout=40), (acker.seqs("bk-1"), _boots(cfg.outbox_path))
        _, _, drops = _boots(cfg.outbox_path)
        assert drops == 0
        # 1600 samples in windows of 32: 50 inference records, each stored once, plus the rest.
        assert acker.inference_records("bk-1") == 50
        assert runner.agent.transport.connects >= 2  # type: ignore[union-attr]
    finally:
        runner.stop()
        acker.close()


@pytest.mark.slow
def test_agent_sigkill_and_lwt(mosquitto_factory, tmp_path, good_bundle, trusted_pub):
    broker = mosquitto_factory()
    acker = CommitAcker(broker.host, broker.port)
    probe = Probe(broker.host, broker.port)
    status_topic = topics.status("default", "kill-1")
    probe.subscribe(status_topic)
    data = tmp_path / "d"
    first = tmp_path / "first.toml"
    first.write_text(
        agent_toml(data, broker.port, device="kill-1", bundle=good_bundle, keys=[trusted_pub])
    )
    second = tmp_path / "second.toml"
    second.write_text(
        agent_toml(
            data,
            broker.port,
            device="kill-1",
            bundle=good_bundle,
            keys=[trusted_pub],
            source="limit_samples = 960",
        )
    )

    def last_status() -> Status | None:
        msgs = [m for m in probe.messages if m.topic == status_topic]
        return decode(msgs[-1].payload) if msgs else None  # type: ignore[return-value]

    proc = AgentProcess(first, tmp_path / "agent1.log")
    try:
        assert acker.wait_for(lambda a: a.inference_records("kill-1") >= 20, timeout=60), (
            tmp_path / "agent1.log"
        ).read_text()[-3000:]
        assert probe.wait_for(lambda _m: (s := last_status()) is not None and s.state == "online")
        proc.kill()
        assert probe.wait_for(
            lambda _m: (
                (s := last_status()) is not None and s.state == "offline" and s.reason == "lwt"
            ),
            timeout=30,
        )
        proc = AgentProcess(second, tmp_path / "agent2.log")
        assert probe.wait_for(
            lambda _m: (s := last_status()) is not None and s.state == "online", timeout=60
        )

        def drained(a: CommitAcker) -> bool:
            boots, depth, _ = _boots(data / "outbox.sqlite")
            return (
                len(boots) == 2
                and depth == 0
                and _complete(a, "kill-1", boots)
                and (a.inference_records("kill-1") >= 30)
            )

        assert acker.wait_for(drained, timeout=60), _boots(data / "outbox.sqlite")
        boots, _, drops = _boots(data / "outbox.sqlite")
        assert drops == 0
        assert {b for b, _ in acker.seqs("kill-1").items()} == set(boots)
        # Retained: a late subscriber learns the device is online without waiting.
        late = Probe(broker.host, broker.port)
        late.subscribe(status_topic)
        assert late.wait_for(lambda m: any(x.retain for x in m))
        assert decode(late.messages[0].payload).state == "online"  # type: ignore[union-attr]
        late.close()
        assert proc.terminate() == 0
        assert probe.wait_for(
            lambda _m: (s := last_status()) is not None and s.reason == "shutdown"
        )
    finally:
        proc.kill()
        probe.close()
        acker.close()


@pytest.mark.slow
def test_full_outbox_drops_oldest_and_counts(mosquitto_factory, tmp_path, good_bundle, trusted_pub):
    broker = mosquitto_factory()
    broker.stop()  # the device starts offline
    extra = "[outbox]\nmax_records = 100\n"
    cfg = make_config(
        agent_toml(
            tmp_path / "d",
            broker.port,
            device="cap-1",
            bundle=good_bundle,
            keys=[trusted_pub],
            source="limit_samples = 9600",
            extra=extra,
        )
        .replace("realtime = true", "realtime = false")
        .replace("interval_s = 0.5", "interval_s = 3600")
        .replace("every_windows = 50", "every_windows = 0")
    )
    runner = AgentThread(cfg)
    acker = None
    try:
        runner.wait_ready(online=False)
        deadline = time.monotonic() + 30
        while not (runner.agent.source_done.is_set() and runner.agent.uplink.pending == 0):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        boots, depth, drops = _boots(cfg.outbox_path)
        (last,) = boots.values()
        assert last == 300  # 9600 samples / 32 per window
        assert depth == 100
        assert drops == last - 100
        broker.start()
        acker = CommitAcker(broker.host, broker.port)
        assert acker.wait_for(lambda _a: _boots(cfg.outbox_path)[1] == 0, timeout=30)
        (boot,) = boots
        # Exactly the newest 100 arrive; exactly the oldest `drops` were dropped.
        assert acker.seqs("cap-1")[boot] == set(range(drops + 1, last + 1))
        assert runner.agent.uplink.drops == drops
        # The health record reports that state: the drops, the model, the latency it measured.
        runner.run(runner.agent.report_health())

        def healths(a: CommitAcker) -> list[Health]:
            return [m for _t, m in a.messages if isinstance(m, Health)]

        assert acker.wait_for(lambda a: len(healths(a)) == 1, timeout=20)
        (health,) = healths(acker)
        assert health.outbox_drops == drops
        assert (health.model, health.model_version) == ("tiny-vib", "1.0.0")
        assert health.inferences == last
        p50, p95, p99 = health.latency_ms_p50, health.latency_ms_p95, health.latency_ms_p99
        assert p50 is not None
        assert p95 is not None
        assert p99 is not None
        assert 0 < p50 <= p95 <= p99
        assert health.mem_rss_mb is not None
        assert health.mem_rss_mb > 0
        assert health.agent_version == runner.agent.version
    finally:
        runner.stop()
        if acker is not None:
            acker.close()


def test_crash_fires_lwt_and_restart_is_online(mosquitto, tmp_path, good_bundle, trusted_pub):
    probe = Probe(mosquitto.host, mosquitto.port)
    topic = topics.status("default", "lwt-1")
    probe.subscribe(topic)
    text = agent_toml(
        tmp_path / "d", mosquitto.port, device="lwt-1", bundle=good_bundle, keys=[trusted_pub]
    )

    states = probe.status_states

    runner = AgentThread(make_config(text))
    runner.wait_ready()
    assert probe.wait_for(lambda _m: ("online", "start") in states())
    runner.crash()
    assert probe.wait_for(lambda _m: states()[-1] == ("offline", "lwt"), timeout=20)
    again = AgentThread(make_config(text))
    again.wait_ready()
    assert probe.wait_for(lambda _m: states()[-1] == ("online", "start"))
    again.stop()
    assert probe.wait_for(lambda _m: states()[-1] == ("offline", "shutdown"))
    probe.close()


def test_rows_leave_only_on_commit_not_on_puback(mosquitto, tmp_path, good_bundle, trusted_pub):
    acker = CommitAcker(mosquitto.host, mosquitto.port)
    acker.pause()  # the ingest is down: the broker PUBACKs, nobody commits
    dev = "pub-1"
    cfg = make_config(
        agent_toml(
            tmp_path / "d",
            mosquitto.port,
            device=dev,
            bundle=good_bundle,
            keys=[trusted_pub],
            source="limit_samples = 640",
        )
        .replace("realtime = true", "realtime = false")
        .replace("interval_s = 0.5", "interval_s = 3600")
        .replace("every_windows = 50", "every_windows = 0")
        .replace("resend_after_s = 5.0", "resend_after_s = 1.0")
    )
    runner = AgentThread(cfg)
    try:
        runner.wait_ready()
        agent = runner.agent
        assert acker.wait_for(lambda _a: agent.source_done.is_set(), timeout=30)
        assert acker.wait_for(lambda _a: agent.uplink.pending == 0, timeout=30)
        boots, _, _ = _boots(cfg.outbox_path)
        produced = boots[agent.sequencer.boot_id]
        assert produced >= 20  # 640 samples / 32 per window, and any events

        def all_pubacked(a: CommitAcker) -> bool:
            t = agent.transport
            return (
                _complete(a, dev, boots)
                and t is not None
                and t.pending == 0
                and agent.uplink.counters.resends >= 1
            )

        # Every record reached the subscriber, every publish was PUBACKed, and was even resent:
        # still nothing left the outbox, because nothing was committed.
        assert acker.wait_for(all_pubacked, timeout=30), (acker.seqs(dev), boots)
        assert _boots(cfg.outbox_path)[1] == produced
        assert agent.uplink.counters.committed == 0
        acker.resume()
        # Everything was PUBACKed already: only a resend (the session never dropped, so no
        # replay) brings the records back to the now committing ingest.
        assert acker.wait_for(lambda _a: _boots(cfg.outbox_path)[1] == 0, timeout=30)
        assert agent.uplink.counters.committed == produced
        assert agent.transport.connects == 1  # type: ignore[union-attr]
    finally:
        runner.stop()
        acker.close()
