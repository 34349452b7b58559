"""Supervise a ``flower-supernode`` child: start, restart with backoff, stop, capture its log."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from edgefleet.edge.fl.errors import SuperNodeError

# Flower colours its log lines; the agent's log is plain text.
_ANSI = str.maketrans("", "", "\x1b")


def _clean(line: bytes) -> str:
    text = line.decode("utf-8", "replace").rstrip()
    while "\x1b[" in text:
        start = text.index("\x1b[")
        end = text.find("m", start)
        text = text[:start] + text[end + 1 :] if end != -1 else text[:start]
    return text.translate(_ANSI)


def child_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of Flower children: this Python's ``bin`` first on PATH.

    The SuperNode starts ``flower-superexec`` and ``flwr-clientapp`` by name, so they must
    resolve to the same installation as the agent.
    """
    env = dict(os.environ if base is None else base)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bindir, env.get("PATH", "")])
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


class SuperNodeSupervisor:
    """Keep one SuperNode running until :meth:`stop`; restart it with exponential backoff.

    Every output line of the child (and its ClientApp processes) goes to ``logger``. The
    child runs in its own process group so :meth:`stop` also ends the helpers it spawned.
    """

    def __init__(
        self,
        command: Sequence[str] | Callable[[], Sequence[str]],
        logger: logging.Logger,
        *,
        env: Mapping[str, str] | None = None,
        restart_min_s: float = 1.0,
        restart_max_s: float = 60.0,
        stable_after_s: float = 60.0,
        cwd: Path | None = None,
    ) -> None:
        # A factory is called for every (re)start: a SuperNode whose ClientAppIo port was
        # taken meanwhile (say, as the local port of an outgoing connection) would otherwise
        # fail to bind at every restart, for ever.
        if callable(command):
            self._factory = command
        else:
            fixed = list(command)
            self._factory = lambda: fixed
        self.command = list(self._factory())
        if not self.command:
            raise SuperNodeError("no SuperNode command to run")
        self.log = logger
        self.env = child_env(env)
        self.restart_min_s = restart_min_s
        self.restart_max_s = restart_max_s
        self.stable_after_s = stable_after_s
        self.cwd = cwd
        self.restarts = 0
        self.starts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._started = threading.Event()

    @property
    def pid(self) -> int | None:
        """PID of the running SuperNode, if one runs."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def running(self) -> bool:
        """Whether a SuperNode process is alive now."""
        return self.pid is not None

    def start(self, timeout: float = 10.0) -> SuperNodeSupervisor:
        """Start the supervision thread; return once the first child is spawned."""
        if self._thread is not None:
            raise SuperNodeError("the SuperNode supervisor is already started")
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="fl-supernode", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise SuperNodeError(f"{self.command[0]} did not start within {timeout:.0f} s")
        return self

    def _spawn(self) -> subprocess.Popen[bytes] | None:
        if self.starts:
            self.command = list(self._factory())
        try:
            proc = subprocess.Popen(
                self.command,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        except OSError as exc:
            self.log.error("cannot start %s: %s", self.command[0], exc)
            return None
        with self._lock:
            self._proc = proc
        self.starts += 1
        self.log.info("SuperNode started (pid %d)", proc.pid)
        return proc

    def _pump(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            text = _clean(line)
            if text:
                self.log.info("supernode: %s", text)

    def _loop(self) -> None:
        delay = self.restart_min_s
        while not self._stop.is_set():
            began = time.monotonic()
            proc = self._spawn()
            self._started.set()
            if proc is not None:
                pump = threading.Thread(target=self._pump, args=(proc,), daemon=True)
                pump.start()
                code = proc.wait()
                pump.join(5)
                if self._stop.is_set():
                    break
                self.log.warning("SuperNode exited with status %s", code)
            if time.monotonic() - began >= self.stable_after_s:
                delay = self.restart_min_s
            self.log.info("restarting the SuperNode in %.1f s", delay)
            if self._stop.wait(delay):
                break
            self.restarts += 1
            delay = min(delay * 2, self.restart_max_s)

    def kill(self) -> None:
        """SIGKILL the current SuperNode and its helpers (a crash; the supervisor restarts it)."""
        self._signal(signal.SIGKILL)

    def _signal(self, sig: signal.Signals) -> None:
        with self._lock:
            proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)

    def abort(self) -> None:
        """Stop at once, as a power cut would: SIGKILL the group, wait for nothing."""
        self._stop.set()
        self._signal(signal.SIGKILL)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop supervising: SIGTERM the SuperNode's group, SIGKILL it after ``timeout``."""
        self._stop.set()
        self._signal(signal.SIGTERM)
        proc = self._proc
        if proc is not None:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                proc.wait(5)
            # Helpers (superexec, ClientApps) share the group; make sure none outlives us.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            if proc.stdout is not None:
                proc.stdout.close()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._started.clear()
