"""Scenario files: device groups and a timeline of drift and faults, validated with clear errors.

A scenario is YAML (``simulators/scenarios/*.yaml`` are documented examples)::

    name: outage
    seed: 7
    duration: 60
    groups:
      - {name: pumps, share: 0.6, model: vibration-anomaly, tags: [site-a]}
      - {name: wearables, model: activity, source: simulated}
    events:
      - {at: 10, kind: drift, group: pumps, drift: shift, magnitude: 2}
      - {at: 15, kind: broker-outage, for: 20}

Times are seconds (``20``) or strings (``"20s"``, ``"1m30s"``, ``"500ms"``).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct, field

from edgefleet.protocol.errors import MissingExtra, TopicError
from edgefleet.protocol.topics import validate_id
from edgefleet.simulators.errors import ScenarioError

Seconds = Annotated[float, Meta(ge=0)]
Positive = Annotated[float, Meta(gt=0)]
ModelName = Literal["vibration-anomaly", "activity", "none"]

# What each model reads, so a group naming only its model gets a matching signal and rate.
MODEL_SIGNALS: dict[str, tuple[str, float]] = {
    "vibration-anomaly": ("vibration", 400.0),
    "activity": ("activity", 50.0),
    "none": ("vibration", 50.0),
}


class Group(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A set of alike devices: model, signal, sample rate, source and tags."""

    name: str
    count: Annotated[int, Meta(ge=0)] | None = None
    share: Annotated[float, Meta(ge=0, le=1)] | None = None
    model: ModelName = "vibration-anomaly"
    signal: Literal["vibration", "activity"] | None = None
    rate_hz: Positive | None = None
    chunk: Annotated[int, Meta(ge=1, le=10_000)] | None = None
    source: Literal["simulated", "serial"] = "simulated"
    publish_readings: bool = False
    variation: Annotated[float, Meta(ge=0)] = 1.0
    tags: list[str] = []

    @property
    def effective_signal(self) -> str:
        """The signal generator this group's devices read."""
        return self.signal or MODEL_SIGNALS[self.model][0]

    @property
    def effective_rate(self) -> float:
        """Samples per second per device."""
        return self.rate_hz or MODEL_SIGNALS[self.model][1]


class _Event(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="kind"):
    at: Seconds

    @property
    def until(self) -> float:
        """When the event's effect ends (its start for instant events)."""
        return self.at + float(getattr(self, "duration", 0.0))


class DriftOnset(_Event, tag="drift", frozen=True, kw_only=True, forbid_unknown_fields=True):
    """From ``at`` on, the group's signal drifts: shift, scale, or a new mode."""

    group: str
    drift: Literal["shift", "scale", "mode"]
    magnitude: float = 1.0


class BrokerOutage(
    _Event, tag="broker-outage", frozen=True, kw_only=True, forbid_unknown_fields=True
):
    """The broker is down for ``for`` seconds (killed, or stopped cleanly with hard: false)."""

    duration: Positive = field(name="for")
    hard: bool = True


class Partition(_Event, tag="partition", frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The group's network is cut (connections dropped, new ones refused) for ``for`` seconds."""

    group: str
    duration: Positive = field(name="for")


class Crash(_Event, tag="crash", frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``count`` devices of the group (chosen by the seed) lose power; restart after a while."""

    group: str
    count: Annotated[int, Meta(ge=1)] = 1
    restart_after: Positive = 5.0

    @property
    def until(self) -> float:
        """When the crashed devices are up again."""
        return self.at + self.restart_after


class SlowDevice(_Event, tag="slow", frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Each chunk of the group's devices arrives ``delay_ms`` late for ``for`` seconds."""

    group: str
    delay_ms: Positive
    duration: Positive = field(name="for")


class ClockSkew(_Event, tag="clock-skew", frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The group's wall clocks jump by ``offset_s`` seconds (a Pi without RTC after boot)."""

    group: str
    offset_s: float


class OutboxCap(_Event, tag="outbox-cap", frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The group's outbox is capped at ``max_records`` while offline for ``for`` seconds."""

    group: str
    max_records: Annotated[int, Meta(ge=1)]
    duration: Positive = field(name="for")


Event = DriftOnset | BrokerOutage | Partition | Crash | SlowDevice | ClockSkew | OutboxCap
EVENT_KINDS: dict[str, type[_Event]] = {
    "drift": DriftOnset,
    "broker-outage": BrokerOutage,
    "partition": Partition,
    "crash": Crash,
    "slow": SlowDevice,
    "clock-skew": ClockSkew,
    "outbox-cap": OutboxCap,
}


class Scenario(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Groups and the timeline of a simulated run."""

    name: str = "scenario"
    seed: int = 0
    duration: Positive | None = None
    fleet: str = "sim"
    groups: list[Group]
    events: list[Event] = []

    def group(self, name: str) -> Group:
        """The group called ``name``."""
        for g in self.groups:
            if g.name == name:
                return g
        raise ScenarioError(f"unknown group {name!r}")


_TIME = re.compile(
    r"^\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m(?!s))?\s*"
    r"(?:(\d+(?:\.\d+)?)s)?\s*(?:(\d+(?:\.\d+)?)ms)?\s*$"
)


def parse_time(value: Any, where: str) -> float:
    """Seconds from a number or a string such as ``20s``, ``1m30s`` or ``500ms``."""
    if isinstance(value, bool):
        raise ScenarioError(f"{where}: {value!r} is not a time; write seconds (20) or 20s, 1m30s")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _TIME.match(value)) and any(m.groups()):
        h, mi, s, ms = (float(g) if g else 0.0 for g in m.groups())
        seconds = h * 3600 + mi * 60 + s + ms / 1000
    else:
        raise ScenarioError(f"{where}: {value!r} is not a time; write seconds (20) or 20s, 1m30s")
    if not math.isfinite(seconds) or seconds < 0:
        raise ScenarioError(f"{where}: {value!r} is not a time; it must be zero or more seconds")
    return seconds


def _normalise(raw: Any, origin: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ScenarioError(f"{origin}: a scenario is a mapping with groups: and events:")
    data = dict(raw)
    if "duration" in data and data["duration"] is not None:
        data["duration"] = parse_time(data["duration"], f"{origin}: duration")
    events = data.get("events") or []
    if not isinstance(events, list):
        raise ScenarioError(f"{origin}: events must be a list")
    out = []
    for i, ev in enumerate(events):
        where = f"{origin}: events[{i}]"
        if not isinstance(ev, dict):
            raise ScenarioError(f"{where}: an event is a mapping with at: and kind:")
        kind = ev.get("kind")
        if kind not in EVENT_KINDS:
            raise ScenarioError(
                f"{where}: unknown event kind {kind!r}; choose one of {', '.join(EVENT_KINDS)}"
            )
        if "at" not in ev:
            raise ScenarioError(f"{where} ({kind}): at is required (seconds from the start)")
        if kind == "crash" and "restart_after" in ev and ev["restart_after"] is None:
            # A device that never comes back keeps its undelivered records in its outbox, so
            # "every outbox drained" could not hold for any run with it.
            raise ScenarioError(
                f"{where} (crash): restart_after: null (never restart) is not supported: the "
                "dead device would keep undelivered records and fail the run; give seconds"
            )
        clean = dict(ev)
        for key in ("at", "for", "restart_after"):
            if clean.get(key) is not None:
                clean[key] = parse_time(clean[key], f"{where} ({kind}).{key}")
        out.append(clean)
    data["events"] = out
    return data


def _field_error(exc: msgspec.ValidationError, origin: str) -> ScenarioError:
    msg = str(exc)
    where = ""
    if m := re.search(r"at `\$\.?([^`]*)`", msg):
        where = m.group(1)
    base = msg.split(" - at ", 1)[0]
    if "Object contains unknown field" in base:
        name = re.search(r"`([^`]*)`", base)
        base = f"unknown key {name.group(1) if name else '?'} (check its spelling)"
    return ScenarioError(f"{origin}: {where or 'scenario'}: {base}")


def parse_scenario(data: Any, origin: str = "scenario") -> Scenario:
    """Validate already-parsed YAML/JSON data into a :class:`Scenario` (ScenarioError if bad)."""
    norm = _normalise(data, origin)
    try:
        scenario = msgspec.convert(norm, Scenario)
    except msgspec.ValidationError as exc:
        raise _field_error(exc, origin) from None
    check_scenario(scenario, origin)
    return scenario


def check_scenario(scenario: Scenario, origin: str = "scenario") -> None:
    """Cross-field checks: unique group ids, events name known groups, no clashing windows."""
    names: set[str] = set()
    if not scenario.groups:
        raise ScenarioError(f"{origin}: groups is empty; add at least one device group")
    for g in scenario.groups:
        try:
            validate_id(g.name, "group name")
        except TopicError as exc:
            raise ScenarioError(f"{origin}: group {g.name!r}: {exc}") from None
        if g.name in names:
            raise ScenarioError(f"{origin}: group {g.name!r} is defined twice")
        if g.count is not None and g.share is not None:
            raise ScenarioError(f"{origin}: group {g.name!r}: give count or share, not both")
        names.add(g.name)
    for i, ev in enumerate(scenario.events):
        group = getattr(ev, "group", None)
        if group is not None and group not in names:
            raise ScenarioError(
                f"{origin}: events[{i}] ({type(ev).__struct_config__.tag}): unknown group "
                f"{group!r}; the groups are {', '.join(sorted(names))}"
            )
    _check_overlaps(scenario, origin)


# Windows of these kinds, on one group, must not overlap: each event undoes its effect when
# its own window ends (a partition heals the group's proxy, a slow device speeds up again, a
# crashed device restarts), which would cut the other window short or start a device twice.
_EXCLUSIVE: tuple[tuple[str, tuple[type[_Event], ...]], ...] = (
    ("network cut (partition, outbox-cap)", (Partition, OutboxCap)),
    ("slow", (SlowDevice,)),
    ("crash", (Crash,)),
    ("broker-outage", (BrokerOutage,)),
)


def _check_overlaps(scenario: Scenario, origin: str) -> None:
    for family, kinds in _EXCLUSIVE:
        seen: list[tuple[int, _Event]] = []
        for i, ev in enumerate(scenario.events):
            if not isinstance(ev, kinds):
                continue
            for j, other in seen:
                group = getattr(ev, "group", None)
                overlap = ev.at < other.until and other.at < ev.until
                if overlap and group == getattr(other, "group", None):
                    where = f" of group {group!r}" if group is not None else ""
                    raise ScenarioError(
                        f"{origin}: events[{j}] ({_tag(other)}, {other.at:g}s to "
                        f"{other.until:g}s) and events[{i}] ({_tag(ev)}, {ev.at:g}s to "
                        f"{ev.until:g}s) overlap: {family} windows{where} may not; "
                        "merge them into one or move one after the other ends"
                    )
            seen.append((i, ev))


def _tag(ev: _Event) -> str:
    return str(type(ev).__struct_config__.tag)


def check_times(scenario: Scenario, duration: float, origin: str = "scenario") -> None:
    """Every event must start and end within a run of ``duration`` seconds."""
    for i, ev in enumerate(scenario.events):
        kind = type(ev).__struct_config__.tag
        end = ev.until
        if ev.at >= duration or end > duration:
            raise ScenarioError(
                f"{origin}: events[{i}] ({kind}) at {ev.at:g}s"
                + (f" ends at {end:g}s" if end != ev.at else "")
                + f", after the end of the run ({duration:g}s); move it earlier or run longer"
            )


def load_scenario(path: Path) -> Scenario:
    """Read and validate a YAML scenario file."""
    try:
        import yaml
    except ImportError:
        # A missing extra, not a bad scenario: exit status 3 like every missing extra (cli.md).
        raise MissingExtra(
            "scenario files need pyyaml, in the 'sim' extra: pip install 'edgefleet[sim]'"
        ) from None
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ScenarioError(f"cannot read scenario {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{path} is not valid YAML: {exc}") from None
    return parse_scenario(data, origin=str(path))


def default_scenario(seed: int = 0) -> Scenario:
    """Two groups and no faults: what ``edgefleet sim run`` does without ``--scenario``."""
    return Scenario(
        name="default",
        seed=seed,
        groups=[
            Group(name="pumps", share=0.5, model="vibration-anomaly", tags=["pumps"]),
            Group(name="wearables", model="activity", tags=["wearables"]),
        ],
    )
