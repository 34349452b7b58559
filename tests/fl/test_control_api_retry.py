"""A SuperLink whose Control API answers 500 now and then does not end the run; one that keeps
failing ends it with an error that says so.

The 500 is the real one: the SuperLink keeps its state in a SQLite file here (``database=``),
and the test holds that file's write lock past Flower's 5 s ``busy_timeout``, exactly what a
busy SuperLink's own writers did to ``list-runs`` on a loaded machine (docs/federated.md).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgefleet.cloud.fl.apps.outcome import run_on_superlink
from edgefleet.cloud.fl.apps.prepare import prepare_run
from edgefleet.cloud.fl.errors import ControlApiError, QuorumNotReached
from edgefleet.cloud.fl.settings import RunSettings
from edgefleet.cloud.fl.superlink.control import ControlRetry
from edgefleet.cloud.fl.superlink.process import SuperLink

MODEL = "vibration-anomaly"


@contextmanager
def write_locked(db: Path) -> Iterator[None]:
    """Hold ``db``'s SQLite write lock (what a long write transaction does)."""
    con = sqlite3.connect(db, isolation_level=None, timeout=30)
    try:
        con.execute("BEGIN IMMEDIATE")
        yield
        con.execute("ROLLBACK")
    finally:
        con.close()


def _lock_once(db: Path, *, after: float, hold: float, done: threading.Event) -> None:
    time.sleep(after)
    with write_locked(db):
        time.sleep(hold)
    done.set()


def _file_link(tmp_path: Path, retry: ControlRetry) -> SuperLink:
    return SuperLink(tmp_path / "link", database=tmp_path / "link" / "state.db", retry=retry)


def test_the_in_memory_state_is_the_default() -> None:
    # The file database is what made list-runs wait on its writers; it is opt-in now.
    assert SuperLink(Path("/nonexistent")).database is None


class FailsOnce:
    """A Control API client whose first ``ListRuns`` fails as Flower's client does on a 500."""

    calls = 0

    def __init__(self, real: Any) -> None:
        self.real = real

    def ListRuns(self, request: Any) -> Any:
        FailsOnce.calls += 1
        if FailsOnce.calls == 1:
            url = "http://superlink/v1/control/list-runs"
            # raise_for_status on a 500 is exactly what flwr's ProtobufClient raises.
            httpx.Response(500, request=httpx.Request("POST", url)).raise_for_status()
        return self.real.ListRuns(request)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class FlakyLink(SuperLink):
    """A real SuperLink whose first list-runs answer, as our code sees it, is a 500."""

    def _client(self) -> Any:
        return FailsOnce(super()._client())


@pytest.mark.slow(seconds=30)
def test_a_run_survives_a_control_api_500(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    settings = RunSettings(
        model=MODEL, rounds=1, min_clients=2, workdir=str(tmp_path / "run"), quorum_timeout_s=4
    )
    prepare_run(settings)
    FailsOnce.calls = 0
    link = FlakyLink(tmp_path / "link", retry=ControlRetry(first_delay_s=0.1)).start()
    try:
        # No client comes: the ServerApp skips its one round and ends by itself, which is
        # how the run must end, not with the Control API's 500.
        with (
            caplog.at_level(logging.WARNING, logger="edgefleet.cloud.fl.superlink.process"),
            pytest.raises(QuorumNotReached, match="quorum not reached"),
        ):
            run_on_superlink(settings, link, timeout=120)
    finally:
        link.stop()
    assert FailsOnce.calls > 1
    (retry,) = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert "list-runs (HTTP 500 Internal Server Error), attempt 1 of 6" in retry


@pytest.mark.slow(seconds=25)
def test_list_runs_rides_out_a_locked_state_database(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    # The real 500: list-runs writes (it expires task tokens), and a writer that holds the
    # state file's lock past Flower's 5 s busy_timeout makes it fail with "database is locked".
    settings = RunSettings(model=MODEL, rounds=1, min_clients=2, workdir=str(tmp_path / "run"))
    prepare_run(settings)
    settings.write()
    link = _file_link(tmp_path, ControlRetry(attempts=4, first_delay_s=0.2, max_delay_s=1.0))
    released = threading.Event()
    link.start()
    try:
        run_id = link.start_run(settings.settings_path)
        assert link.database is not None
        locker = threading.Thread(
            target=_lock_once,
            args=(link.database,),
            kwargs={"after": 0.0, "hold": 6.5, "done": released},
            daemon=True,
        )
        with caplog.at_level(logging.WARNING, logger="edgefleet.cloud.fl.superlink.process"):
            locker.start()
            time.sleep(0.3)
            st = link.status(run_id)
        locker.join(10)
        assert released.is_set()
        assert st.status in ("pending", "starting", "running", "finished")
    finally:
        link.stop()
    retries = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert retries
    assert "list-runs (HTTP 500 Internal Server Error)" in retries[0]
    assert "[/v1/control/list-runs][UnexpectedError:OperationalError]" in link.log_path.read_text()
    assert "database is locked" in link.log_path.read_text()


@pytest.mark.slow(seconds=20)
def test_a_control_api_that_keeps_failing_ends_with_a_clear_error(tmp_path: Path):
    link = _file_link(tmp_path, ControlRetry(attempts=2, first_delay_s=0.1, max_delay_s=0.1))
    link.start()
    try:
        assert link.database is not None
        with write_locked(link.database), pytest.raises(ControlApiError) as err:
            link.status(1)
        message = str(err.value)
        assert "failed list-runs 2 times" in message
        assert "HTTP 500 Internal Server Error" in message
        assert str(link.log_path) in message
        # A final answer (no such run: 404) is not retried, and says what was refused.
        began = time.monotonic()
        with pytest.raises(ControlApiError, match="refused list-runs: HTTP 404"):
            link.status(12345)
        assert time.monotonic() - began < 3
    finally:
        link.stop()
