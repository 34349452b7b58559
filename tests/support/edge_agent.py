"""Helpers to run agents in tests: configs, an in-process runner thread, a subprocess runner."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TypeVar

from edgefleet.edge.agent import Agent
from edgefleet.edge.config import AgentConfig, parse_config
from edgefleet.protocol import topics
from edgefleet.protocol.codec import decode
from edgefleet.protocol.errors import DecodeError
from edgefleet.protocol.messages import Status
from support.mqtt import Probe, Received
from support.trust import command_public_key

T = TypeVar("T")


def agent_toml(
    data_dir: Path,
    port: int,
    *,
    device: str = "dev-1",
    bundle: Path | None = None,
    keys: list[Path] | None = None,
    extra: str = "",
    source: str = "",
    command_keys: list[Path] | None = None,
    record_key: Path | None = None,
) -> str:
    """A config for a fast test agent talking to the broker on ``port``.

    The agent trusts the test command key (support.trust) unless ``command_keys`` says
    otherwise (``[]``: an agent that refuses every command).
    """
    keys = keys or []
    cmd_keys = [command_public_key()] if command_keys is None else command_keys
    trust = "command_keys = [" + ", ".join(f'"{k}"' for k in cmd_keys) + "]\n"
    if record_key is not None:
        trust += f'record_key = "{record_key}"\n'

    model = ""
    if bundle is not None:
        model = f'bundle = "{bundle}"\n'
    key_list = ", ".join(f'"{k}"' for k in keys)
    return f"""
[device]
id = "{device}"
fleet = "default"
data_dir = "{data_dir}"

[mqtt]
host = "127.0.0.1"
port = {port}
reconnect_min_s = 0.05
reconnect_max_s = 0.5
keepalive_s = 5

[source]
kind = "simulated"
seed = 3
rate_hz = 400.0
chunk = 64
realtime = true
{source}

[model]
{model}trusted_keys = [{key_list}]

[trust]
{trust}
[uplink]
batch_max = 50
flush_interval_s = 0.05
resend_after_s = 5.0

[health]
interval_s = 0.5

[drift]
every_windows = 50
{extra}
"""


def make_config(text: str) -> AgentConfig:
    """Parse a test config."""
    return parse_config(text, env={})


class AgentThread:
    """Runs one :class:`Agent` on its own event loop in a thread (tests drive it from outside)."""

    def __init__(self, cfg: AgentConfig, **kwargs: object) -> None:
        self.loop = asyncio.new_event_loop()
        self.agent = Agent(cfg, **kwargs)  # type: ignore[arg-type]
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.agent.run())
        except BaseException as exc:  # surfaced to the test by join()
            self.error = exc
        finally:
            self.loop.close()

    def call(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` on the agent's loop."""
        self.loop.call_soon_threadsafe(fn)

    def run(self, coro: Coroutine[object, object, T], timeout: float = 20) -> T:
        """Run ``coro`` on the agent's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def wait_exit(self, timeout: float = 30) -> BaseException | None:
        """Wait for ``agent.run()`` to end by itself; return the error it ended with, if any."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "agent is still running"
        return self.error

    def wait_ready(self, timeout: float = 30, *, online: bool = True) -> None:
        """Wait until the model is loaded, the tasks run, and commands can reach the agent.

        The agent subscribes to its command topics and then publishes its retained birth on the
        same connection, so once this boot's "online" status is on the broker, the broker has
        processed the subscription: a command published after this returns is delivered.
        ``online=False`` is for an agent that starts with its broker down.
        """
        deadline = time.monotonic() + timeout
        while not self.agent.ready.is_set():
            if self.error is not None:
                raise self.error
            assert time.monotonic() < deadline, "agent did not start"
            time.sleep(0.01)
        if online:
            self._wait_birth(deadline)

    def _wait_birth(self, deadline: float) -> None:
        agent = self.agent
        probe = Probe(agent.cfg.mqtt.host, agent.cfg.mqtt.port)
        try:
            probe.subscribe(topics.status(agent.fleet, agent.device_id))

            def born(msgs: list[Received]) -> bool:
                for m in msgs:
                    with contextlib.suppress(DecodeError):
                        status = decode(m.payload)
                        if (
                            isinstance(status, Status)
                            and status.state == "online"
                            and status.boot_id == agent.sequencer.boot_id
                        ):
                            return True
                return False

            left = max(0.1, deadline - time.monotonic())
            assert probe.wait_for(born, left), f"{agent.device_id} never published its birth"
        finally:
            probe.close()

    def stop(self, timeout: float = 20) -> None:
        """Clean shutdown."""
        if self.loop.is_closed():
            return
        self.call(self.agent.stop)
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "agent did not stop"
        if self.error is not None:
            raise self.error

    def crash(self, timeout: float = 20) -> None:
        """Crash: no flush, no DISCONNECT."""
        self.call(self.agent.crash)
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "agent did not stop after crash"


class AgentProcess:
    """``edgefleet agent run --config FILE`` as a child process (killed with SIGKILL in tests)."""

    def __init__(self, config: Path, log: Path) -> None:
        self._log = open(log, "ab")  # noqa: SIM115 - closed in wait/kill
        exe = Path(sys.executable).parent / "edgefleet"
        self.proc = subprocess.Popen(
            [str(exe), "agent", "run", "--config", str(config)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to clean up."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()

    def terminate(self, timeout: float = 20) -> int:
        """SIGTERM: a clean shutdown."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout)
        self._log.close()
        return rc
