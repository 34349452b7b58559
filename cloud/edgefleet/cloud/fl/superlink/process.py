"""Run a ``flower-superlink`` child process and drive runs through its Control API.

This is the one module of the cloud that touches Flower's internals (the Control API client,
FAB building): ``flwr run`` cannot be used because Flower 1.41's own CLI fails to start with
the typer version this project pins (``Type not yet supported: Literal``), and ``flwr run``
exits 0 even when the ServerApp crashes, so runs are started and polled here instead.

Every Control API call goes through :meth:`SuperLink._call`, which retries transient failures
(HTTP 5xx, a connection or a timeout) with a bounded backoff: a loaded SuperLink answers 500
now and then (docs/federated.md, "Control API errors"), and one of them must not end a run.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self, TypeVar

import psutil

from edgefleet.cloud.fl.errors import ControlApiError, FlRunError
from edgefleet.cloud.fl.superlink.certs import TlsFiles
from edgefleet.cloud.fl.superlink.control import (
    ControlRetry,
    RunStatus,
    control_client,
    describe,
    register_node,
    transient,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
# Frozen, so every SuperLink may share one default.
DEFAULT_RETRY = ControlRetry()

APP_TOML = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "edgefleet-fl"
version = "0.1.0"
description = "edgefleet federated learning"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "edgefleet"

[tool.flwr.app.components]
serverapp = "edgefleet.cloud.fl.apps.serverapp:app"
clientapp = "edgefleet.edge.fl.clientapp:app"

[tool.flwr.app.config]
settings = ""
"""


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def flower_env(home: Path) -> dict[str, str]:
    """Environment for Flower processes: our ``bin`` on PATH and a private ``FLWR_HOME``."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["FLWR_HOME"] = str(home)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def write_app(directory: Path, app_toml: str = APP_TOML) -> Path:
    """The Flower app directory (just its ``pyproject.toml``: our code is installed)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "pyproject.toml").write_text(app_toml)
    return directory


class SuperLink:
    """A ``flower-superlink`` child on a free loopback port (or ``host:port``), stopped on exit."""

    def __init__(
        self,
        workdir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: TlsFiles | None = None,
        supernode_auth: bool = False,
        database: Path | None = None,
        retry: ControlRetry = DEFAULT_RETRY,
    ) -> None:
        self.workdir = Path(workdir)
        self.host = host
        self.port = port or free_port()
        self.tls = tls
        self.supernode_auth = supernode_auth
        # None: Flower's in-memory state. A SQLite file makes every Control API call wait on
        # one write lock shared with every SuperNode's writes (docs/federated.md).
        self.database = None if database is None else Path(database).resolve()
        self.retry = retry
        self.home = self.workdir / "flwr-home"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def address(self) -> str:
        """``host:port`` of the SuperLink (Fleet, Control and ServerAppIo share it in 1.41)."""
        return f"{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        """The SuperLink's combined output."""
        return self.workdir / "superlink.log"

    def start(self, timeout: float = 60.0) -> Self:
        """Start the SuperLink and wait until it accepts connections."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.home.mkdir(parents=True, exist_ok=True)
        cmd = [
            str(Path(sys.executable).parent / "flower-superlink"),
            "--host", self.host, "--port", str(self.port),
            # Dependencies are ours, installed; never let Flower run `uv sync` on a FAB.
            "--disable-runtime-dependency-installation",
        ]  # fmt: skip
        if self.database is not None:
            cmd += ["--database", str(self.database)]
        if self.tls is None:
            cmd.append("--insecure")
        else:
            cmd += ["--ssl-ca-certfile", str(self.tls.ca), "--ssl-certfile", str(self.tls.cert),
                    "--ssl-keyfile", str(self.tls.key)]  # fmt: skip
        if self.supernode_auth:
            cmd.append("--enable-supernode-auth")
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=self.workdir,
            env=flower_env(self.home), start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise FlRunError(f"flower-superlink exited; see {self.log_path}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise FlRunError(f"flower-superlink did not listen on {self.address} in {timeout:.0f} s")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the SuperLink and every process it started (SuperExec, ServerApps)."""
        proc, self._proc = self._proc, None
        # Flower starts the SuperLink's SuperExec in a session of its own, and the ServerApps
        # it launches with it: a process-group kill misses them, and a ServerApp whose
        # SuperLink is gone retries its HTTP calls for ever (seen after a failed run).
        helpers = _descendants(proc.pid) if proc is not None else []
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)
        if proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        _kill_all(helpers + [p for h in helpers for p in _descendants(h.pid)])
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:  # fmt: skip
        self.stop()

    def _client(self) -> Any:
        return control_client(self.address, self.home, None if self.tls is None else self.tls.ca)

    def _call(self, what: str, call: Callable[[Any], T], *, idempotent: bool = True) -> T:
        """``call(client)`` on a fresh Control API client, retried while its failure is transient.

        Raises :class:`ControlApiError` once the retries are spent, at once for a final answer
        (4xx), and at once if the SuperLink process itself has exited.
        """
        began = time.monotonic()
        for attempt in range(1, self.retry.attempts + 1):
            client = self._client()
            try:
                return call(client)
            except Exception as exc:
                if self._proc is not None and self._proc.poll() is not None:
                    raise FlRunError(
                        f"the SuperLink died ({what}: {describe(exc)}); see {self.log_path}"
                    ) from None
                if not transient(exc, idempotent=idempotent):
                    raise ControlApiError(
                        f"the SuperLink at {self.address} refused {what}: {describe(exc)}; "
                        f"see {self.log_path}"
                    ) from exc
                if attempt == self.retry.attempts:
                    raise ControlApiError(
                        f"the SuperLink at {self.address} failed {what} {attempt} times in "
                        f"{time.monotonic() - began:.0f} s (last: {describe(exc)}); "
                        f"its log says why: {self.log_path}"
                    ) from exc
                delay = self.retry.delay(attempt)
                log.warning(
                    "the SuperLink's Control API failed %s (%s), attempt %d of %d; retrying in "
                    "%.1f s", what, describe(exc), attempt, self.retry.attempts, delay,
                )  # fmt: skip
                time.sleep(delay)
            finally:
                client.close()
        raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover

    def register_node(self, public_key: Path, *, name: str | None = None) -> int:
        """Register a SuperNode's OpenSSH public key (``flwr supernode register``); its node id.

        Needs ``supernode_auth`` for SuperNodes without a key to be refused; one with a key is
        let in only once its key is registered. Under TLS the client trusts ``tls.ca``.
        """
        return register_node(
            self.address, public_key, home=self.home,
            ca=None if self.tls is None else self.tls.ca, name=name,
        )  # fmt: skip

    def nodes(self) -> dict[int, str]:
        """Registered SuperNodes and their status (``registered``, ``online``, ``offline``)."""
        from flwr.proto.control_pb2 import ListNodesRequest

        res = self._call("list-nodes", lambda c: c.ListNodes(ListNodesRequest()))
        return {int(n.node_id): str(n.status) for n in res.nodes_info}

    def start_run(self, settings_path: Path, *, app_toml: str = APP_TOML) -> int:
        """Submit our app (or ``app_toml``'s) with ``settings_path`` as its run config."""
        from flwr.cli.build import build_fab_from_disk
        from flwr.common.serde import fab_to_proto, user_config_to_proto
        from flwr.proto.control_pb2 import StartRunRequest
        from flwr.supercore.fab import Fab

        with tempfile.TemporaryDirectory(prefix="edgefleet-fab-") as tmp:
            fab_bytes = build_fab_from_disk(write_app(Path(tmp) / "app", app_toml))
        fab = Fab(hashlib.sha256(fab_bytes).hexdigest(), fab_bytes, {})
        request = StartRunRequest(
            fab=fab_to_proto(fab),
            override_config=user_config_to_proto({"settings": str(settings_path)}),
            federation="",
            app_spec="",
        )
        # Not sent again after a 5xx: the SuperLink may have made the run before it failed.
        res = self._call("start-run", lambda c: c.StartRun(request), idempotent=False)
        if not res.HasField("run_id"):
            raise FlRunError("the SuperLink did not start the run")
        return int(res.run_id)

    def status(self, run_id: int) -> RunStatus:
        """The run's current status."""
        from flwr.common.serde import run_from_proto
        from flwr.proto.control_pb2 import ListRunsRequest

        res = self._call("list-runs", lambda c: c.ListRuns(ListRunsRequest(run_id=run_id)))
        run = run_from_proto(res.run_dict[run_id])
        return RunStatus(run.status.status, run.status.sub_status, run.status.details)

    def stop_run(self, run_id: int) -> None:
        """Ask the SuperLink to stop a run."""
        from flwr.proto.control_pb2 import StopRunRequest

        self._call("stop-run", lambda c: c.StopRun(StopRunRequest(run_id=run_id)))

    def wait(
        self,
        run_id: int,
        timeout: float,
        *,
        poll: Callable[[], None] | None = None,
        interval: float = 0.5,
    ) -> RunStatus:
        """Wait for the run to finish (calling ``poll`` meanwhile); stop it past ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.status(run_id)
            if poll is not None:
                poll()
            if st.finished:
                return st
            if self._proc is not None and self._proc.poll() is not None:
                raise FlRunError(f"the SuperLink died during run {run_id}; see {self.log_path}")
            if time.monotonic() > deadline:
                self.stop_run(run_id)
                raise FlRunError(f"run {run_id} did not finish in {timeout:.0f} s; stopped it")
            time.sleep(interval)


def _descendants(pid: int) -> list[psutil.Process]:
    """Every live process below ``pid`` (none when it is gone)."""
    try:
        return list(psutil.Process(pid).children(recursive=True))
    except psutil.Error:
        return []


def _kill_all(procs: list[psutil.Process]) -> None:
    """SIGKILL each process that still runs and reap what we can."""
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(procs, timeout=5)
