"""Smoke: an agent streams inference results to a committing ingest and its outbox drains."""

from __future__ import annotations

from pathlib import Path

from support.commit_acker import CommitAcker
from support.edge_agent import AgentThread, agent_toml, make_config


def test_agent_streams_and_commits(mosquitto, tmp_path: Path, good_bundle: Path, trusted_pub: Path):
    acker = CommitAcker(mosquitto.host, mosquitto.port)
    cfg = make_config(
        agent_toml(
            tmp_path / "d", mosquitto.port, device="quick-1", bundle=good_bundle, keys=[trusted_pub]
        )
    )
    runner = AgentThread(cfg)
    try:
        runner.wait_ready()
        assert acker.wait_for(lambda a: a.inference_records("quick-1") >= 20)
        assert acker.wait_for(lambda a: a.kinds["Health"] >= 1)
        assert acker.wait_for(lambda a: any(s.state == "online" for s in a.statuses))
    finally:
        runner.stop()
        acker.close()
