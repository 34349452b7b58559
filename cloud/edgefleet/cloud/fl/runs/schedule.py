"""Federated runs on a schedule: the cloud starts a run every N minutes once enough devices are up.

The schedule is ``FlServiceSettings.schedule`` plus the ``[[run]]`` tables of
``<fl workdir>/schedule.toml`` (docs/federated.md)::

    [[run]]
    every_minutes = 60
    model = "vibration-anomaly"
    rounds = 3
    min_clients = 3

Each entry is due ``every_minutes`` after the cloud starts, then that long after its last run
started. A due entry starts when enough devices serving the model are online (the API's own
check); until then it stays due and is tried again at every poll, so it starts as soon as they
come. It never overlaps itself: while its last run is going it waits for that run's end.
"""

from __future__ import annotations

import logging
import threading
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edgefleet.cloud.errors import NoTargets
from edgefleet.cloud.fl.errors import FlSettingsError
from edgefleet.cloud.fl.runs.run import FlRun, FlRunRequest
from edgefleet.protocol.errors import EdgefleetError

log = logging.getLogger(__name__)
SCHEDULE_FILE = "schedule.toml"


@dataclass(frozen=True, slots=True)
class FlSchedule:
    """One scheduled run: ``request`` every ``every_s`` seconds."""

    request: FlRunRequest
    every_s: float

    def __post_init__(self) -> None:
        if not self.every_s > 0:
            raise FlSettingsError(
                f"a scheduled {self.request.model} run needs a positive interval, "
                f"not {self.every_s} s"
            )


def load_schedule(path: Path) -> tuple[FlSchedule, ...]:
    """The ``[[run]]`` entries of a schedule file (none if it does not exist)."""
    if not path.is_file():
        return ()
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise FlSettingsError(f"cannot read the federated schedule {path}: {exc}") from None
    runs = data.pop("run", [])
    if data or not isinstance(runs, list):
        raise FlSettingsError(f"{path}: only [[run]] tables belong in a federated schedule")
    out: list[FlSchedule] = []
    for i, entry in enumerate(runs, 1):
        fields: dict[str, Any] = dict(entry)
        minutes = fields.pop("every_minutes", None)
        if not isinstance(minutes, int | float) or isinstance(minutes, bool):
            raise FlSettingsError(f"{path}: run {i} needs every_minutes = N")
        if "devices" in fields:
            fields["devices"] = tuple(fields["devices"])
        try:
            request = FlRunRequest(**fields)
        except TypeError as exc:
            # An unknown key: the message names it (a typo must not be a silent default).
            raise FlSettingsError(f"{path}: run {i}: {exc}") from None
        except FlSettingsError as exc:
            raise FlSettingsError(f"{path}: run {i}: {exc}") from None
        out.append(FlSchedule(request, float(minutes) * 60.0))
    return tuple(out)


class RunStarter(Protocol):
    """What the scheduler needs of :class:`edgefleet.cloud.fl.runs.service.FlService`."""

    def start(self, req: FlRunRequest) -> FlRun:
        """Start a run (raises ``NoTargets`` when too few devices are online)."""
        ...

    def get(self, run_id: str) -> FlRun:
        """One run."""
        ...


class FlScheduler:
    """Starts the scheduled runs when due; :meth:`tick` does one pass, a thread calls it."""

    def __init__(
        self,
        runs: RunStarter,
        schedule: Sequence[FlSchedule],
        *,
        clock: Callable[[], float] = time.monotonic,
        poll_s: float = 15.0,
    ) -> None:
        self.runs = runs
        self.schedule = tuple(schedule)
        self.clock = clock
        self.poll_s = poll_s
        now = clock()
        self.due = [now + s.every_s for s in self.schedule]
        self.last_run: list[str | None] = [None] * len(self.schedule)
        # Why each due entry has not started yet ("" when it is not waiting).
        self.waiting: list[str] = [""] * len(self.schedule)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> list[FlRun]:
        """Start every due entry that can start now; returns the runs started."""
        started: list[FlRun] = []
        now = self.clock()
        for i, entry in enumerate(self.schedule):
            if now < self.due[i]:
                continue
            last = self.last_run[i]
            if last is not None and not self.runs.get(last).done:
                self._wait(i, f"its last run {last} is still going")
                continue
            try:
                run = self.runs.start(entry.request)
            except NoTargets as exc:
                self._wait(i, str(exc))  # too few devices online (or no broker): next poll
                continue
            except EdgefleetError as exc:
                # The cloud cannot run it at all (no signing key, unknown version): retrying at
                # every poll would only repeat this, so it waits for its next slot.
                log.error("scheduled %s run not started: %s", entry.request.model, exc)
                self.due[i] = now + entry.every_s
                continue
            log.info("scheduled %s run %s started", entry.request.model, run.id)
            self.last_run[i], self.waiting[i] = run.id, ""
            self.due[i] = now + entry.every_s
            started.append(run)
        return started

    def _wait(self, i: int, reason: str) -> None:
        if reason != self.waiting[i]:  # once per reason, not at every poll
            log.info("scheduled %s run waits: %s", self.schedule[i].request.model, reason)
        self.waiting[i] = reason

    def start(self) -> FlScheduler:
        """Poll every ``poll_s`` on a daemon thread until :meth:`stop`."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="fl-schedule", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.tick()
            except Exception:  # the schedule must outlive one bad pass
                log.exception("federated schedule pass failed")

    def stop(self) -> None:
        """Stop polling (runs already started go on)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
