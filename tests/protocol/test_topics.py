"""Topic building and parsing: every shape round-trips, every invalid id is refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgefleet.protocol import topics
from edgefleet.protocol.errors import TopicError
from edgefleet.protocol.topics import Kind, Topic

ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,40}", fullmatch=True)


def test_every_shape_builds_the_documented_string() -> None:
    assert topics.status("f1", "d1") == "edgefleet/v1/f1/d1/status"
    assert topics.telemetry("f1", "d1", "health") == "edgefleet/v1/f1/d1/telemetry/health"
    assert topics.event("f1", "d1", "model-swap") == "edgefleet/v1/f1/d1/event/model-swap"
    assert topics.command("f1", "d1", "assign-model") == "edgefleet/v1/f1/d1/cmd/assign-model"
    assert topics.command_ack("f1", "d1", "commit") == "edgefleet/v1/f1/d1/cmd/commit/ack"
    assert topics.command("f1", "_all", "set-config") == "edgefleet/v1/f1/_all/cmd/set-config"


@given(fleet=ids, device=ids, name=ids, kind=st.sampled_from(list(Kind)))
def test_parse_inverts_build(fleet: str, device: str, name: str, kind: Kind) -> None:
    t = Topic(fleet, device, kind, None if kind is Kind.STATUS else name)
    assert topics.parse(str(t)) == t


def test_broadcast_is_only_for_commands() -> None:
    t = topics.parse("edgefleet/v1/f1/_all/cmd/set-config")
    assert t.is_broadcast
    with pytest.raises(TopicError, match="only commands may be broadcast"):
        topics.telemetry("f1", "_all", "health")


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("", "non-empty"),
        ("dev/1", "may hold only"),
        ("dev+", "may hold only"),
        ("dev#", "may hold only"),
        ("$SYS", "may hold only"),
        ("_private", "may hold only"),
        ("with space", "may hold only"),
        ("x" * 65, "the limit is 64"),
    ],
)
def test_invalid_ids_are_refused_with_a_clear_error(bad: str, message: str) -> None:
    with pytest.raises(TopicError, match=message):
        topics.status("fleet", bad)
    with pytest.raises(TopicError, match=message):
        topics.telemetry(bad if bad else "", "dev", "health")


@pytest.mark.parametrize(
    "bad",
    [
        "edgefleet/v2/f/d/status",
        "other/v1/f/d/status",
        "edgefleet/v1/f/d",
        "edgefleet/v1/f/d/status/extra",
        "edgefleet/v1/f/d/telemetry",
        "edgefleet/v1/f/d/cmd/x/nack",
        "edgefleet/v1/f/+/status",
        "edgefleet/v1/f/d/telemetry/#",
        "edgefleet/v1/f//status",
    ],
)
def test_malformed_topics_raise_topic_error(bad: str) -> None:
    with pytest.raises(TopicError):
        topics.parse(bad)


def test_filters_and_acl_patterns_cover_the_device_subtree() -> None:
    assert topics.uplink_filters("f1")[0] == "edgefleet/v1/f1/+/status"
    assert topics.device_command_filters("f1", "d1") == [
        "edgefleet/v1/f1/d1/cmd/+",
        "edgefleet/v1/f1/_all/cmd/+",
    ]
    assert topics.shared("ingest", "edgefleet/v1/+/+/status") == (
        "$share/ingest/edgefleet/v1/+/+/status"
    )
    assert all("/%u/" in line for line in topics.DEVICE_ACL_PATTERNS[:-1])


# Text built from topic-like pieces, so that many draws come close to a valid topic.
_pieces = st.sampled_from(
    ["edgefleet", "v1", "v2", "f1", "d1", "_all", "status", "telemetry", "event", "cmd", "ack"]
)
_levels = st.lists(_pieces | st.text(max_size=8), max_size=8).map("/".join)


@given(st.one_of(st.text(max_size=200), _levels))
def test_parse_returns_a_valid_topic_or_raises_topic_error(text: str) -> None:
    try:
        topic = topics.parse(text)
    except TopicError:
        return
    # Whatever parses is a topic the builders would produce, byte for byte.
    assert str(topic) == text
    assert topics.parse(str(topic)) == topic
