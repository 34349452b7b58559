"""Scenario files are validated with clear, typed errors; plans are deterministic per seed."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.simulators.errors import ScenarioError
from edgefleet.simulators.plan import plan_fleet
from edgefleet.simulators.scenario import (
    BrokerOutage,
    Crash,
    Partition,
    load_scenario,
    parse_scenario,
    parse_time,
)

EXAMPLES = sorted((Path(__file__).parents[2] / "simulators" / "scenarios").glob("*.yaml"))
GROUPS = [{"name": "pumps", "share": 0.5}, {"name": "lines", "model": "activity"}]


def scenario(*events: dict[str, object], **extra: object) -> dict[str, object]:
    return {"groups": GROUPS, "events": list(events), **extra}


def test_examples_are_valid() -> None:
    assert len(EXAMPLES) >= 3
    for path in EXAMPLES:
        spec = load_scenario(path)
        plan = plan_fleet(spec, 50, None)
        assert len(plan.devices) == 50
        assert plan.duration == spec.duration


def test_a_full_scenario_parses_with_time_strings() -> None:
    spec = parse_scenario(
        scenario(
            {"at": "1m", "kind": "broker-outage", "for": "20s"},
            {"at": 5, "kind": "crash", "group": "pumps", "count": 2, "restart_after": "500ms"},
            {"at": "1m30s", "kind": "partition", "group": "lines", "for": 10},
        )
    )
    outage, crash, part = spec.events
    assert isinstance(outage, BrokerOutage)
    assert (outage.at, outage.duration, outage.hard) == (60.0, 20.0, True)
    assert isinstance(crash, Crash)
    assert (crash.count, crash.restart_after) == (2, 0.5)
    assert isinstance(part, Partition)
    assert part.at == 90.0


@pytest.mark.parametrize(
    ("events", "message"),
    [
        ([{"at": 1, "kind": "meteor"}], "unknown event kind 'meteor'; choose one of drift"),
        ([{"kind": "crash", "group": "pumps"}], "(crash): at is required"),
        ([{"at": "soon", "kind": "crash", "group": "pumps"}], "'soon' is not a time"),
        ([{"at": -3, "kind": "crash", "group": "pumps"}], "must be zero or more seconds"),
        ([{"at": 1, "kind": "partition", "group": "x", "for": 2}], "unknown group 'x'"),
        ([{"at": 1, "kind": "drift", "group": "pumps", "drift": "wobble"}], "events[0].drift"),
        ([{"at": 1, "kind": "crash", "group": "pumps", "count": 0}], "events[0].count"),
        ([{"at": 1, "kind": "crash", "group": "pumps", "colour": 1}], "unknown key colour"),
        ([{"at": 1, "kind": "partition", "group": "lines"}], "missing required field `for`"),
        (["crash at 3"], "an event is a mapping"),
    ],
)
def test_bad_events_are_refused_with_a_clear_message(events: list[object], message: str) -> None:
    with pytest.raises(ScenarioError) as err:
        parse_scenario({"groups": GROUPS, "events": events}, origin="s.yaml")
    assert message in str(err.value)
    assert str(err.value).startswith("s.yaml")
    assert err.value.exit_code == 4
    assert err.value.reason == "bad-scenario"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"groups": []}, "groups is empty"),
        ({"groups": [{"name": "a"}, {"name": "a"}]}, "defined twice"),
        ({"groups": [{"name": "a/b"}]}, "group 'a/b'"),
        ({"groups": [{"name": "a", "count": 1, "share": 0.5}]}, "count or share, not both"),
        ({"groups": [{"name": "a", "model": "gpt"}]}, "groups[0].model"),
        ({"groups": [{"name": "a"}], "colour": "red"}, "unknown key colour"),
        ([1, 2], "a scenario is a mapping"),
    ],
)
def test_bad_groups_are_refused(data: object, message: str) -> None:
    with pytest.raises(ScenarioError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_scenario(data)


def test_events_after_the_end_of_the_run_are_refused() -> None:
    spec = parse_scenario(scenario({"at": 50, "kind": "broker-outage", "for": 20}))
    with pytest.raises(ScenarioError, match=r"ends at 70s, after the end of the run \(60s\)"):
        plan_fleet(spec, 10, 60.0)
    assert plan_fleet(spec, 10, 70.0).duration == 70.0


def test_a_crash_of_more_devices_than_the_group_has_is_refused() -> None:
    spec = parse_scenario(scenario({"at": 1, "kind": "crash", "group": "lines", "count": 9}))
    with pytest.raises(ScenarioError, match="wants 9 devices of group 'lines', which has 5"):
        plan_fleet(spec, 10, 30.0)


def test_files_that_are_not_yaml_or_not_there(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("groups: [unclosed\n")
    with pytest.raises(ScenarioError, match="is not valid YAML"):
        load_scenario(bad)
    with pytest.raises(ScenarioError, match="cannot read scenario"):
        load_scenario(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    ("value", "seconds"), [(3, 3.0), (2.5, 2.5), ("20s", 20.0), ("1m30s", 90.0), ("250ms", 0.25)]
)
def test_time_forms(value: object, seconds: float) -> None:
    assert parse_time(value, "t") == seconds


def test_plans_are_deterministic_per_seed() -> None:
    spec = parse_scenario(
        scenario({"at": 1, "kind": "crash", "group": "pumps", "count": 3}, seed=4)
    )
    a, b = plan_fleet(spec, 40, 10.0), plan_fleet(spec, 40, 10.0)
    assert a.actions[0].devices == b.actions[0].devices
    assert [d.seed for d in a.devices] == [d.seed for d in b.devices]
    assert len({d.seed for d in a.devices}) == 40  # every device its own signal
    other = parse_scenario(
        scenario({"at": 1, "kind": "crash", "group": "pumps", "count": 3}, seed=5)
    )
    assert plan_fleet(other, 40, 10.0).actions[0].devices != a.actions[0].devices


def test_group_sizes_and_process_split() -> None:
    spec = parse_scenario(
        {"groups": [{"name": "a", "count": 3}, {"name": "b", "share": 0.25}, {"name": "c"}]}
    )
    plan = plan_fleet(spec, 20, 5.0)
    assert {g: len(m) for g, m in plan.groups.items()} == {"a": 3, "b": 5, "c": 12}
    parts = plan.split(3)
    assert sorted(d.device_id for p in parts for d in p) == sorted(
        d.device_id for d in plan.devices
    )
    with pytest.raises(ScenarioError, match="the groups take 3 devices but --devices is 2"):
        plan_fleet(spec, 2, 5.0)


def test_a_crash_that_never_restarts_is_refused() -> None:
    # The dead device would keep its undelivered records: "every outbox drained" cannot hold.
    with pytest.raises(ScenarioError) as err:
        parse_scenario(
            scenario({"at": 1, "kind": "crash", "group": "pumps", "restart_after": None}),
            origin="s.yaml",
        )
    assert str(err.value).startswith("s.yaml: events[0] (crash): restart_after: null")
    assert "give seconds" in str(err.value)


@pytest.mark.parametrize(
    ("first", "second", "family"),
    [
        (
            {"at": 5, "kind": "partition", "group": "pumps", "for": 10},
            {"at": 8, "kind": "outbox-cap", "group": "pumps", "max_records": 5, "for": 3},
            "network cut (partition, outbox-cap) windows of group 'pumps'",
        ),
        (
            {"at": 5, "kind": "outbox-cap", "group": "lines", "max_records": 5, "for": 4},
            {"at": 2, "kind": "outbox-cap", "group": "lines", "max_records": 9, "for": 4},
            "network cut (partition, outbox-cap) windows of group 'lines'",
        ),
        (
            {"at": 5, "kind": "slow", "group": "pumps", "delay_ms": 50, "for": 10},
            {"at": 14, "kind": "slow", "group": "pumps", "delay_ms": 90, "for": 3},
            "slow windows of group 'pumps'",
        ),
        (
            {"at": 5, "kind": "crash", "group": "pumps", "restart_after": 4},
            {"at": 8, "kind": "crash", "group": "pumps"},
            "crash windows of group 'pumps'",
        ),
        (
            {"at": 5, "kind": "broker-outage", "for": 10},
            {"at": 10, "kind": "broker-outage", "for": 2},
            "broker-outage windows may not",
        ),
    ],
)
def test_overlapping_windows_on_one_group_are_refused(
    first: dict[str, object], second: dict[str, object], family: str
) -> None:
    with pytest.raises(ScenarioError) as err:
        parse_scenario(scenario(first, second), origin="s.yaml")
    message = str(err.value)
    assert message.startswith("s.yaml: events[0] (")
    assert "and events[1] (" in message
    assert family in message
    assert "merge them into one or move one after the other ends" in message


def test_windows_that_touch_or_are_on_other_groups_are_accepted() -> None:
    spec = parse_scenario(
        scenario(
            {"at": 5, "kind": "partition", "group": "pumps", "for": 5},
            {"at": 10, "kind": "outbox-cap", "group": "pumps", "max_records": 5, "for": 5},
            {"at": 6, "kind": "partition", "group": "lines", "for": 5},
            {"at": 6, "kind": "slow", "group": "pumps", "delay_ms": 20, "for": 2},
        )
    )
    assert len(plan_fleet(spec, 10, 30.0).actions) == 4
