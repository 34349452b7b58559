"""sd_notify: READY=1, WATCHDOG=1 from the event loop, STOPPING=1; a hung loop stops the pings."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.edge_agent import AgentThread, agent_toml, make_config

from edgefleet.edge.watchdog import Notifier, serve


class Manager:
    """The service manager's end: a bound Unix datagram socket, as systemd's notify socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.got: list[tuple[float, list[str]]] = []

    def read_until(self, pred, timeout: float) -> list[str]:
        """Collect datagrams until one has a line for which ``pred`` holds; return its lines."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                break
            lines = data.decode().split("\n")
            self.got.append((time.monotonic(), lines))
            if any(pred(x) for x in lines):
                return lines
        raise AssertionError(f"no matching datagram in {timeout} s; got {self.got}")

    def pings_within(self, seconds: float) -> int:
        """How many WATCHDOG=1 datagrams arrive in the next ``seconds``."""
        end = time.monotonic() + seconds
        n = 0
        while (left := end - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                break
            n += "WATCHDOG=1" in data.decode().split("\n")
        return n

    def close(self) -> None:
        self.sock.close()


@pytest.mark.slow(seconds=10)
def test_launcher_says_ready_then_pings_and_a_stopped_process_stops_the_pings(
    mosquitto, tmp_path, good_bundle, trusted_pub
):
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        agent_toml(
            tmp_path / "d", mosquitto.port, device="wd-1", bundle=good_bundle, keys=[trusted_pub]
        )
    )
    manager = Manager(tmp_path / "notify")
    env = {**os.environ, "NOTIFY_SOCKET": str(manager.path), "WATCHDOG_USEC": "400000"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgefleet.edge", "--config", str(cfg)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        ready = manager.read_until(lambda x: x == "READY=1", 30)
        assert "STATUS=wd-1: serving tiny-vib@1.0.0" in ready
        # Every 0.2 s (half of WATCHDOG_USEC): at least 5 in 1.5 s, with scheduling slack.
        assert manager.pings_within(1.5) >= 5
        proc.send_signal(signal.SIGSTOP)  # hung: the loop runs no more
        time.sleep(0.1)  # a datagram already in flight
        manager.pings_within(0.1)
        assert manager.pings_within(1.0) == 0
        proc.send_signal(signal.SIGCONT)
        assert manager.pings_within(1.0) >= 2
        proc.send_signal(signal.SIGTERM)
        manager.read_until(lambda x: x == "STOPPING=1", 20)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        manager.close()


@pytest.mark.slow(seconds=8)
def test_a_blocked_event_loop_stops_the_pings(
    mosquitto, tmp_path, good_bundle, trusted_pub, monkeypatch
):
    """The pings come from the event loop itself: blocking it (not the process) stops them."""
    manager = Manager(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", str(manager.path))
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    runner = AgentThread(
        make_config(
            agent_toml(
                tmp_path / "d",
                mosquitto.port,
                device="wd-2",
                bundle=good_bundle,
                keys=[trusted_pub],
            )
        )
    )
    try:
        runner.wait_ready()
        manager.read_until(lambda x: x == "READY=1", 10)
        # The agent's children must not inherit the socket and speak for it.
        assert "NOTIFY_SOCKET" not in os.environ
        assert manager.pings_within(1.0) >= 5
        # Block the loop from inside for 1.5 s, as a blocking call or a deadlock would; the
        # process, its other threads (inference, outbox) and this test go on meanwhile.
        runner.call(lambda: time.sleep(1.5))
        time.sleep(0.2)
        assert manager.pings_within(1.0) == 0
        time.sleep(0.5)
        assert manager.pings_within(1.0) >= 3
    finally:
        runner.stop()
        manager.close()


def test_notifier_reads_and_clears_the_environment(monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", "@edgefleet-test")
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    n = Notifier.from_environment()
    assert (n.address, n.watchdog_usec) == ("@edgefleet-test", 30_000_000)
    assert not {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"} & set(os.environ)

    # A watchdog meant for another process (our parent) is not ours to feed.
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/x")
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert Notifier.from_environment().watchdog_usec is None


def test_abstract_socket_address_and_no_manager(tmp_path):
    name = f"edgefleet-wd-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        assert Notifier(f"@{name}", None).notify("READY=1", "STATUS=x")
        assert sock.recv(100) == b"READY=1\nSTATUS=x"
    finally:
        sock.close()
    assert not Notifier(None, None).notify("READY=1")
    # Nobody listening: the agent goes on (False, no exception).
    assert not Notifier(str(tmp_path / "gone"), None).notify("READY=1")

    class Dev:
        device_id = "d"
        model_ref = (None, None)

    # Outside systemd serve() ends at once, so the agent's supervisor sees a finished task.
    asyncio.run(asyncio.wait_for(serve(Dev(), Notifier(None, 10)), 1))
