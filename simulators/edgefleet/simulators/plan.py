"""Expand a scenario into concrete devices and per-device actions, deterministically from a seed."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from edgefleet.simulators.errors import ScenarioError
from edgefleet.simulators.scenario import (
    BrokerOutage,
    Crash,
    Event,
    Group,
    Scenario,
    check_times,
)


@dataclass(frozen=True, slots=True)
class DevicePlan:
    """One simulated device: identity, group, seeded signal, model and source."""

    device_id: str
    group: str
    index: int
    seed: int
    model: str
    signal: str
    rate_hz: float
    chunk: int
    source: str
    publish_readings: bool
    variation: float
    tags: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Action:
    """A timeline event applied to some devices (``devices`` empty for fleet-wide events)."""

    at: float
    index: int
    event: Event
    devices: tuple[str, ...] = ()

    @property
    def kind(self) -> str:
        """The event kind as written in the scenario."""
        return str(type(self.event).__struct_config__.tag)


@dataclass(frozen=True, slots=True)
class FleetPlan:
    """Every device and the ordered timeline of one run."""

    scenario: Scenario
    duration: float
    devices: tuple[DevicePlan, ...]
    actions: tuple[Action, ...]
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def split(self, processes: int) -> list[tuple[DevicePlan, ...]]:
        """Devices dealt round-robin over ``processes`` (so every group spans every process)."""
        return [self.devices[i::processes] for i in range(processes)]

    @property
    def broker_outages(self) -> list[Action]:
        """The fleet-wide broker outages, in time order."""
        return [a for a in self.actions if isinstance(a.event, BrokerOutage)]


def _sizes(groups: list[Group], devices: int | None) -> list[int]:
    if devices is None:
        if any(g.count is None for g in groups):
            raise ScenarioError("give --devices, or a count for every group of the scenario")
        return [int(g.count or 0) for g in groups]
    sizes: list[int | None] = []
    for g in groups:
        if g.count is not None:
            sizes.append(g.count)
        elif g.share is not None:
            sizes.append(round(g.share * devices))
        else:
            sizes.append(None)
    fixed = sum(s for s in sizes if s is not None)
    if fixed > devices:
        raise ScenarioError(f"the groups take {fixed} devices but --devices is {devices}")
    free = [i for i, s in enumerate(sizes) if s is None]
    rest = devices - fixed
    out = [s or 0 for s in sizes]
    if free:
        for k, i in enumerate(free):
            out[i] = rest // len(free) + (1 if k < rest % len(free) else 0)
    elif rest:
        out[max(range(len(out)), key=lambda i: out[i])] += rest
    return out


def plan_fleet(scenario: Scenario, devices: int | None, duration: float | None) -> FleetPlan:
    """Devices of every group and the timeline, checked against the run's length."""
    run_for = duration if duration is not None else scenario.duration
    if run_for is None:
        raise ScenarioError("give --duration, or duration: in the scenario")
    check_times(scenario, run_for)
    rng = random.Random(scenario.seed)  # noqa: S311 - simulation, not secrets
    sizes = _sizes(scenario.groups, devices)
    plans: list[DevicePlan] = []
    members: dict[str, tuple[str, ...]] = {}
    for g, n in zip(scenario.groups, sizes, strict=True):
        ids = []
        for i in range(n):
            device_id = f"{g.name}-{i:04d}"
            # Per-device variation: every device has its own seed, so its own signal.
            seed = scenario.seed * 100_003 + len(plans) + 1
            rate = g.effective_rate
            plans.append(
                DevicePlan(
                    device_id=device_id,
                    group=g.name,
                    index=len(plans),
                    seed=seed,
                    model=g.model,
                    signal=g.effective_signal,
                    rate_hz=rate,
                    chunk=g.chunk or max(1, round(rate / 10)),
                    source=g.source,
                    publish_readings=g.publish_readings,
                    variation=g.variation,
                    tags=(g.name, *g.tags),
                )
            )
            ids.append(device_id)
        members[g.name] = tuple(ids)
    actions: list[Action] = []
    for i, ev in enumerate(scenario.events):
        group = getattr(ev, "group", None)
        targets: tuple[str, ...] = ()
        if group is not None:
            targets = members[group]
            if isinstance(ev, Crash):
                if ev.count > len(targets):
                    raise ScenarioError(
                        f"events[{i}] (crash) wants {ev.count} devices of group {group!r}, "
                        f"which has {len(targets)}"
                    )
                targets = tuple(sorted(rng.sample(targets, ev.count)))
            if not targets:
                raise ScenarioError(f"events[{i}]: group {group!r} has no devices in this run")
        actions.append(Action(ev.at, i, ev, targets))
    actions.sort(key=lambda a: (a.at, a.index))
    return FleetPlan(scenario, run_for, tuple(plans), tuple(actions), members)
