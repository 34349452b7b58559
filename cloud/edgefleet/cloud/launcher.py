"""Run a whole cloud as a child process (for tests and the simulator) and wait until it serves."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from edgefleet.cloud.errors import CloudError
from edgefleet.cloud.mqtt import MqttVersion


class CloudProcess:
    """``python -m edgefleet.cloud run`` in a child process; SIGKILL-able like a real crash.

    >>> with CloudProcess(tmp_path, broker_url=broker.url) as cloud:   # doctest: +SKIP
    ...     cloud.http_url, cloud.broker_url
    """

    def __init__(
        self,
        workdir: Path,
        *,
        broker_url: str | None = None,
        db_url: str | None = None,
        trusted_keys: tuple[Path, ...] = (),
        fleet: str | None = None,
        workers: int = 1,
        mqtt_version: MqttVersion | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        # What the child is handed does not depend on any current directory.
        self.workdir = Path(workdir).expanduser().resolve()
        self.args = ["--workdir", str(self.workdir), "--http", "127.0.0.1:0"]
        if broker_url:
            self.args += ["--broker", broker_url]
        if db_url:
            self.args += ["--db", db_url]
        for key in trusted_keys:
            self.args += ["--trusted-key", str(key)]
        if fleet:
            self.args += ["--fleet", fleet]
        if mqtt_version is not None:
            # An amqtt broker (MQTT 3.1.1 only) the child did not start itself needs this.
            self.args += ["--mqtt-version", mqtt_version]
        self.args += ["--workers", str(workers), *extra_args]
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.info: dict[str, str] = {}

    @property
    def ready_file(self) -> Path:
        """Where the child writes its URLs once it serves."""
        return self.workdir / "ready.json"

    @property
    def log_path(self) -> Path:
        """The child's stdout and stderr."""
        return self.workdir / "cloud.log"

    @property
    def http_url(self) -> str:
        """Base URL of the child's HTTP API."""
        return self.info["http_url"]

    @property
    def broker_url(self) -> str:
        """The broker the child uses (the one it started, without --broker)."""
        return self.info["broker_url"]

    def start(self, timeout: float = 60.0) -> Self:
        """Start the child and wait for its ready file."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ready_file.unlink(missing_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop/kill
        cmd = [sys.executable, "-m", "edgefleet.cloud", "run", *self.args]
        cmd += ["--ready-file", str(self.ready_file)]
        self._proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while not self.ready_file.exists():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                self.kill()
                raise CloudError(f"the cloud process did not get ready; its log:\n{tail}")
            time.sleep(0.05)
        self.info = json.loads(self.ready_file.read_text())
        return self

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def kill(self) -> None:
        """SIGKILL the child and everything it started (a crash: nothing is flushed)."""
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
        self._close()

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM: flush, disconnect, stop the broker it started."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close()

    def _close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
