"""A failing agent task ends the agent with its error, without a clean disconnect (the LWT)."""

from __future__ import annotations

import socket

from support.edge_agent import AgentThread, agent_toml, make_config
from support.mqtt import Probe

from edgefleet.edge.errors import SourceError, TaskFailed
from edgefleet.edge.sources.base import Chunk
from edgefleet.edge.sources.simulated import SimulatedSource
from edgefleet.protocol import topics


class FailingSource:
    """A simulated sensor that raises ``error`` after ``good`` chunks."""

    def __init__(self, good: int, error: BaseException) -> None:
        self._inner = SimulatedSource("vibration", 3, rate_hz=400.0, chunk=64, realtime=True)
        self.channels = self._inner.channels
        self.rate_hz = self._inner.rate_hz
        self._left = good
        self._error = error

    async def read(self) -> Chunk | None:
        """The simulated chunk, until the failure."""
        if self._left <= 0:
            raise self._error
        self._left -= 1
        return await self._inner.read()

    def close(self) -> None:
        """Nothing to release."""


def test_source_error_ends_agent_and_fires_lwt(mosquitto, tmp_path, good_bundle, trusted_pub):
    dev = "sup-1"
    probe = Probe(mosquitto.host, mosquitto.port)
    status_topic = topics.status("default", dev)
    probe.subscribe(status_topic)
    gone = SourceError("serial port /dev/ttyACM0 did not come back within open_timeout_s")
    cfg = make_config(
        agent_toml(
            tmp_path / "d", mosquitto.port, device=dev, bundle=good_bundle, keys=[trusted_pub]
        )
    )
    runner = AgentThread(cfg, source=FailingSource(10, gone))

    states = probe.status_states

    try:
        runner.wait_ready()
        error = runner.wait_exit(timeout=30)
        # The typed error itself, so the launcher exits with its code (non-zero).
        assert error is gone
        assert error.exit_code != 0
        # No clean disconnect: the broker published the will, never a "shutdown" status.
        assert probe.wait_for(lambda _m: states()[-1] == ("offline", "lwt"), timeout=20), states()
        assert ("offline", "shutdown") not in states()
    finally:
        probe.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_bug_in_a_task_ends_agent_with_task_failed(tmp_path, good_bundle, trusted_pub):
    cfg = make_config(
        agent_toml(
            tmp_path / "d", _free_port(), device="sup-2", bundle=good_bundle, keys=[trusted_pub]
        )
    )
    bug = ZeroDivisionError("division by zero in a preprocessing step")
    runner = AgentThread(cfg, source=FailingSource(3, bug))
    runner.wait_ready(online=False)
    error = runner.wait_exit(timeout=30)
    assert isinstance(error, TaskFailed), error
    assert error.__cause__ is bug
    assert "infer task failed with ZeroDivisionError" in str(error)
    assert error.exit_code != 0
