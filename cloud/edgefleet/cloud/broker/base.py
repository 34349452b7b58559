"""A broker run as a child process on loopback: start, stop, kill and restart on one port."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from edgefleet.protocol.errors import EdgefleetError

log = logging.getLogger(__name__)


class BrokerNotReady(EdgefleetError):
    """The broker process did not accept connections in time."""

    reason = "broker-not-ready"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class BrokerProcess:
    """Base of broker runners: owns the child process, its log file and its port.

    The port stays the same across :meth:`restart`, so clients reconnect to the same URL, and
    the work directory (persistence, logs) survives restarts: that is what fault tests need.
    """

    name = "broker"
    # The laptop brokers let anyone on this machine in; the production one says otherwise.
    allows_anonymous = True

    def __init__(self, workdir: Path, port: int | None = None, host: str = "127.0.0.1") -> None:
        # The broker runs with this as its current directory: a relative path would not be
        # found from there, so it is made absolute against the caller's directory.
        self.workdir = Path(workdir).expanduser().resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.port = port or free_port(host)
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """``mqtt://host:port`` of the broker."""
        return f"mqtt://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        """Where the broker's output goes."""
        return self.workdir / f"{self.name}.log"

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def running(self) -> bool:
        """True while the child process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> list[str]:
        """The argv that starts the broker."""
        raise NotImplementedError

    def start(self, timeout: float = 10.0) -> Self:
        """Start the broker and wait until it accepts TCP connections."""
        if self.running:
            return self
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in _reap
        self._proc = subprocess.Popen(
            self.command(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                self._reap()
                raise BrokerNotReady(f"{self.name} exited at start; its log says:\n{tail}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.host, self.port), timeout=0.2),
            ):
                if self.allows_anonymous:
                    log.warning(
                        "%s on %s:%s allows anonymous clients with no ACL (loopback only, the "
                        "laptop default); for devices on a network run `edgefleet cloud "
                        "broker-config` (docs/broker.md, Production)",
                        self.name,
                        self.host,
                        self.port,
                    )
                return self
            time.sleep(0.02)
        self.kill()
        raise BrokerNotReady(f"{self.name} did not listen on {self.host}:{self.port} in {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop cleanly (SIGTERM): the broker writes its persistence file first."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._reap()

    def kill(self) -> None:
        """Kill at once (SIGKILL), as a crash or power cut would: no clean-up happens."""
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
        self._reap()

    def restart(self, *, hard: bool = False) -> Self:
        """Stop (or kill, with ``hard``) and start again on the same port."""
        if hard:
            self.kill()
        else:
            self.stop()
        # The port may linger in TIME_WAIT; brokers set SO_REUSEADDR so a restart binds at once.
        return self.start()

    def _reap(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
        self._proc = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
