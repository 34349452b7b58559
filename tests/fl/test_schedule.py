"""Runs on a schedule: due every N minutes, started once enough devices are online, no overlap."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from edgefleet.cloud.errors import NoTargets
from edgefleet.cloud.fl.errors import FlSettingsError
from edgefleet.cloud.fl.runs.run import FlRun, FlRunRequest
from edgefleet.cloud.fl.runs.schedule import SCHEDULE_FILE, FlSchedule, FlScheduler, load_schedule
from edgefleet.cloud.fl.runs.service import FlService, FlServiceSettings
from edgefleet.cloud.node import CloudNode
from edgefleet.cloud.registry import ModelRegistry
from edgefleet.cloud.store import open_store

HOUR = 3600.0


class Clock:
    """Time that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Fleet:
    """Stands in for FlService at the scheduler's seam: ``online`` devices serve the model."""

    def __init__(self) -> None:
        self.online = 0
        self.runs: dict[str, FlRun] = {}
        self.refuse: Exception | None = None

    def start(self, req: FlRunRequest) -> FlRun:
        if self.refuse is not None:
            raise self.refuse
        if self.online < req.min_clients:
            # FlService.targets' own words and error.
            raise NoTargets(
                f"{self.online} device(s) can train {req.model}, the run needs "
                f"{req.min_clients} (min_clients)",
                reason="too-few-devices",
            )
        run = FlRun(f"fl-{len(self.runs)}", req, [f"d{i}" for i in range(self.online)])
        run.state = "running"
        self.runs[run.id] = run
        return run

    def get(self, run_id: str) -> FlRun:
        return self.runs[run_id]


def test_a_due_run_waits_for_devices_and_its_last_run_then_starts(caplog):
    clock, fleet = Clock(), Fleet()
    entry = FlSchedule(FlRunRequest(model="vibration-anomaly", min_clients=2), every_s=HOUR)
    sched = FlScheduler(fleet, [entry], clock=clock)
    clock.now += HOUR - 1
    fleet.online = 3
    assert sched.tick() == []  # not due yet, however many devices are up
    clock.now += 1
    fleet.online = 1
    with caplog.at_level(logging.INFO, logger="edgefleet.cloud.fl.runs.schedule"):
        assert sched.tick() == []
        assert sched.tick() == []
    assert "1 device(s) can train vibration-anomaly, the run needs 2" in sched.waiting[0]
    assert caplog.text.count("run waits") == 1  # said once, not at every poll
    clock.now += 60
    fleet.online = 2  # the second device comes online: the run starts at the next poll
    (first,) = sched.tick()
    assert first.request is entry.request
    assert sched.waiting[0] == ""
    # Next slot: an hour after that start. Its run is still going, so it waits for it...
    clock.now += HOUR
    assert sched.tick() == []
    assert sched.waiting[0] == f"its last run {first.id} is still going"
    first.state = "finished"
    clock.now += 30
    (second,) = sched.tick()  # ...and starts once it is over
    assert second.id != first.id
    assert sched.tick() == []
    assert len(fleet.runs) == 2


def test_a_run_the_cloud_cannot_start_waits_for_its_next_slot():
    clock, fleet = Clock(), Fleet()
    sched = FlScheduler(fleet, [FlSchedule(FlRunRequest(model="digits"), 600.0)], clock=clock)
    fleet.online = 5
    fleet.refuse = FlSettingsError("this cloud has no signing key for federated results")
    clock.now += 600
    assert sched.tick() == []
    fleet.refuse = None
    clock.now += 599
    assert sched.tick() == []  # not retried at every poll
    clock.now += 1
    assert len(sched.tick()) == 1


def test_schedule_file_entries_are_checked_when_read(tmp_path: Path):
    path = tmp_path / SCHEDULE_FILE
    assert load_schedule(path) == ()
    path.write_text(
        "[[run]]\nevery_minutes = 90\nmodel = 'digits'\nrounds = 2\ndevices = ['a', 'b']\n"
        "[[run]]\nevery_minutes = 0.5\nmodel = 'vibration-anomaly'\ndp = 'server-fixed'\n"
    )
    first, second = load_schedule(path)
    assert (first.every_s, first.request.rounds, first.request.devices) == (5400, 2, ("a", "b"))
    assert (second.every_s, second.request.dp) == (30, "server-fixed")
    for text, match in [
        ("[[run]]\nmodel = 'digits'\n", "every_minutes"),
        ("[[run]]\nevery_minutes = 0\nmodel = 'digits'\n", "positive interval"),
        ("[[run]]\nevery_minutes = 5\nmodel = 'digits'\nround = 3\n", "round"),
        ("[[run]]\nevery_minutes = 5\nmodel = 'digits'\nstrategy = 'best'\n", "run 1: strategy"),
        ("every_minutes = 5\n", r"only \[\[run\]\]"),
        ("[[run]\n", "cannot read"),
    ]:
        path.write_text(text)
        with pytest.raises(FlSettingsError, match=match):
            load_schedule(path)


def test_the_service_reads_its_schedule_and_its_runs_reach_flservice_start(tmp_path: Path):
    workdir = tmp_path / "fl"
    workdir.mkdir()
    (workdir / SCHEDULE_FILE).write_text("[[run]]\nevery_minutes = 1\nmodel = 'digits'\n")
    store = open_store(f"sqlite:///{tmp_path / 'c.db'}")
    service = FlService(
        FlServiceSettings(workdir=workdir, signing_key=tmp_path / "k"),
        store,
        ModelRegistry(tmp_path / "registry", store, []),
        None,  # no broker connection: FlService.start refuses, as with too few devices
        CloudNode(),
    )
    try:
        assert service.scheduler is not None
        (entry,) = service.scheduler.schedule
        assert entry.every_s == 60
        service.scheduler.due[0] = 0.0  # due now (the thread polls every 15 s; tick here)
        assert service.scheduler.tick() == []
        assert "without a broker connection" in service.scheduler.waiting[0]
    finally:
        service.close()
        store.close()
    assert service.scheduler._thread is None  # close() stopped the polling thread
