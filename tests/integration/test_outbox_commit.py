"""A real agent's outbox keeps its rows while the cloud cannot commit, and empties after."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support.edge_agent import AgentThread, agent_toml, make_config
from support.trust import command_private_key

from edgefleet.cloud.app import Cloud, CloudConfig
from edgefleet.cloud.broker import MosquittoBroker
from edgefleet.cloud.store.base import RECORD_COLUMNS
from edgefleet.edge.outbox import Outbox


def _outbox_keys(path: Path) -> set[tuple[str, int]]:
    box = Outbox(path, readonly=True)
    try:
        return {(r.boot_id, r.seq) for r in box.read_after(0, 100_000)}
    finally:
        box.close()


def _wait(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.mark.slow(seconds=25)
def test_outbox_keeps_rows_until_the_cloud_commits(
    mosquitto_factory: Callable[..., MosquittoBroker], tmp_path: Path
) -> None:
    broker = mosquitto_factory()
    cloud = Cloud(
        CloudConfig(
            workdir=tmp_path / "cloud",
            # The agents trust the test command key (support.trust): this cloud signs with it.
            command_key=command_private_key(),
            broker_url=broker.url,
            http_port=0,
            batch_max_delay_s=0.02,
            dashboard=None,
        )
    ).start()
    # Another writer holds the database: every ingest transaction waits, then fails and is
    # retried. Nothing commits, so no commit-ack may reach the agent.
    lock = sqlite3.connect(cloud.db_url.removeprefix("sqlite:///"), isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    agent = AgentThread(make_config(agent_toml(tmp_path / "agent", broker.port, device="ob-1")))
    try:
        agent.wait_ready()
        path = agent.agent.cfg.outbox_path
        _wait(lambda: len(_outbox_keys(path)) >= 6, 30, "health records in the outbox")
        held = _outbox_keys(path)
        time.sleep(2.0)  # several resend rounds and batch deadlines pass
        assert held <= _outbox_keys(path), "rows left the outbox with nothing committed"
        lock.execute("ROLLBACK")
        # The store recovers: every row held is committed, acked and deleted.
        _wait(lambda: not held & _outbox_keys(path), 60, "the held rows to be committed")
        assert cloud.store is not None
        stored = {k for t in RECORD_COLUMNS for k in cloud.store.record_keys(t, "ob-1")}  # type: ignore[arg-type]
        assert held <= stored
    finally:
        lock.close()
        agent.stop()
        cloud.stop()
