"""Codecs: golden files per schema version, round trips, and one typed error for bad bytes."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.protocol import codec, topics
from edgefleet.protocol.errors import (
    DecodeError,
    InvalidMessage,
    PayloadTooLarge,
    TopicError,
    UnknownSchema,
)
from edgefleet.protocol.examples import examples
from edgefleet.protocol.messages import (
    SCHEMAS,
    Commit,
    CommitRange,
    Event,
    Health,
    InferenceBatch,
    InferenceRecord,
    ranges_of,
    record_seqs,
)

GOLDEN = Path(__file__).parent.parent / "golden" / "protocol" / "v1"
UPDATE = os.environ.get("EDGEFLEET_UPDATE_GOLDEN") == "1"
EXAMPLES = {m.__struct_config__.tag: (t, m) for t, m in examples()}


def _golden_name(schema: str, ext: str) -> Path:
    return GOLDEN / f"{schema.replace('/', '-v')}.{ext}"


def test_every_schema_has_an_example() -> None:
    assert set(EXAMPLES) == set(SCHEMAS)


@pytest.mark.parametrize("schema", sorted(SCHEMAS))
@pytest.mark.parametrize("codec_name", ["json", "msgpack"])
def test_golden_files_decode_and_encode_byte_for_byte(schema: str, codec_name: str) -> None:
    _, message = EXAMPLES[schema]
    path = _golden_name(schema, "json" if codec_name == "json" else "msgpack")
    encoded = codec.encode(message, codec_name)
    if UPDATE:
        path.write_bytes(encoded)
    golden = path.read_bytes()
    assert codec.decode(golden) == message
    assert encoded == golden, f"encoding of {schema} changed: that breaks deployed devices"


def test_json_golden_files_are_readable_json_with_the_envelope() -> None:
    for path in sorted(GOLDEN.glob("*.json")):
        doc = json.loads(path.read_bytes())
        assert {"schema", "device_id", "boot_id", "seq", "sent_at"} <= doc.keys(), path.name


def test_unknown_fields_are_ignored_within_a_version() -> None:
    _, health = EXAMPLES["health/1"]
    doc = json.loads(codec.encode(health))
    doc["added_in_a_later_minor"] = {"nested": [1, 2, 3]}
    assert codec.decode(json.dumps(doc).encode()) == health


def test_fields_with_defaults_may_be_absent() -> None:
    payload = (
        b'{"schema":"health/1","device_id":"d","boot_id":"b","seq":1,"sent_at":0,"uptime_s":1}'
    )
    msg = codec.decode(payload)
    assert isinstance(msg, Health)
    assert msg.outbox_drops == 0


@pytest.mark.parametrize(
    ("payload", "error", "match"),
    [
        (b"", DecodeError, "empty"),
        (b"\x00\x01\x02", DecodeError, "neither a JSON object"),
        (b'{"schema": "health/1", "device_id": "d"', DecodeError, "truncated"),
        (b'{"schema": "health/9", "device_id": "d"}', UnknownSchema, "knows health/1"),
        (b'{"schema": "toaster/1"}', UnknownSchema, "unknown schema 'toaster/1'"),
        (b'{"device_id": "d"}', UnknownSchema, "no 'schema' field"),
        (
            b'{"schema":"health/1","device_id":"d","boot_id":"b","seq":"1","sent_at":0,"uptime_s":1}',
            InvalidMessage,
            r"\$.seq",
        ),
        (
            b'{"schema":"health/1","device_id":"d/x","boot_id":"b","seq":1,"sent_at":0,"uptime_s":1}',
            InvalidMessage,
            "device_id",
        ),
        (
            b'{"schema":"health/1","device_id":"d","boot_id":"b","seq":-1,"sent_at":0,"uptime_s":1}',
            InvalidMessage,
            r"\$.seq",
        ),
        (b"[1, 2, 3]", DecodeError, "neither a JSON object"),
        (b"\xef\x02\x80", UnknownSchema, "binary codec version 2"),
        (b"\xef\x01\xc1", DecodeError, "not a valid payload"),
    ],
)
def test_malformed_payloads_raise_one_typed_error(
    payload: bytes, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        codec.decode(payload)


def test_a_megabyte_of_garbage_is_refused_before_parsing() -> None:
    with pytest.raises(PayloadTooLarge, match="over the 262144-byte limit"):
        codec.decode(b"{" + os.urandom(1024 * 1024))


def test_batch_envelope_must_name_its_first_record() -> None:
    _, batch = EXAMPLES["inference/1"]
    doc = json.loads(codec.encode(batch))
    doc["seq"] = 99
    with pytest.raises(InvalidMessage, match="seq of its first record"):
        codec.decode(json.dumps(doc).encode())


@given(st.binary(max_size=2048))
@settings(max_examples=500)
def test_random_bytes_only_ever_raise_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        codec.decode(data)


@given(st.binary(max_size=512))
@settings(max_examples=300)
def test_random_bytes_behind_valid_headers_only_raise_decode_error(data: bytes) -> None:
    for head in (b"{", b"\xef\x01", b'{"schema":"inference/1",'):
        with contextlib.suppress(DecodeError):
            codec.decode(head + data)


finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)
seqs = st.integers(min_value=0, max_value=2**63 - 1)


@st.composite
def inference_batches(draw: st.DrawFn) -> InferenceBatch:
    first = draw(st.integers(min_value=0, max_value=2**40))
    n = draw(st.integers(min_value=1, max_value=20))
    records = [
        InferenceRecord(
            seq=first + i,
            t=draw(st.floats(min_value=0, max_value=4e9)),
            outputs=draw(st.lists(finite, max_size=8)),
            label=draw(st.none() | st.text(max_size=10)),
            score=draw(st.none() | finite),
        )
        for i in range(n)
    ]
    return InferenceBatch(
        device_id=draw(ids),
        boot_id=draw(ids.filter(lambda s: "." not in s)),
        seq=first,
        sent_at=draw(st.floats(min_value=0, max_value=4e9)),
        model=draw(ids),
        model_version="1.0.0",
        records=records,
    )


messages = st.one_of(
    inference_batches(),
    st.builds(
        Health,
        device_id=ids,
        boot_id=st.just("b1"),
        seq=seqs,
        sent_at=st.floats(min_value=0, max_value=4e9),
        uptime_s=st.floats(0, 1e9),
        cpu_percent=st.none() | finite,
        outbox_depth=st.integers(0, 10**9),
    ),
    st.builds(
        Event,
        device_id=ids,
        boot_id=st.just("b1"),
        seq=seqs,
        sent_at=st.floats(min_value=0, max_value=4e9),
        kind=ids,
        message=st.text(max_size=100),
        data=st.dictionaries(
            st.text(max_size=10),
            st.none()
            | st.booleans()
            | st.integers(-(2**60), 2**60)
            | finite
            | st.text(max_size=20),
            max_size=5,
        ),
    ),
    st.builds(
        Commit,
        device_id=ids,
        boot_id=st.just("c1"),
        seq=seqs,
        sent_at=st.floats(min_value=0, max_value=4e9),
        ranges=st.lists(
            st.builds(lambda a, b: CommitRange("b1", min(a, b), max(a, b)), seqs, seqs),
            min_size=1,
            max_size=5,
        ),
    ),
)


@given(messages, st.sampled_from(["json", "msgpack"]))
@settings(max_examples=300)
def test_round_trip_through_either_codec(message: msgspec.Struct, codec_name: str) -> None:
    assert codec.decode(codec.encode(message, codec_name)) == message  # type: ignore[arg-type]


@given(st.lists(st.integers(min_value=0, max_value=200), max_size=60))
def test_commit_ranges_cover_exactly_the_committed_seqs(seqs_: list[int]) -> None:
    covered = {s for r in ranges_of("b", seqs_) for s in range(r.first, r.last + 1)}
    assert covered == set(seqs_)


def test_binary_codec_is_smaller_than_json() -> None:
    _, batch = EXAMPLES["inference/1"]
    assert len(codec.encode(batch, "msgpack")) < len(codec.encode(batch, "json"))
    assert record_seqs(batch) == [2, 3]


def test_check_topic_refuses_impostors_and_misplaced_payloads() -> None:
    topic, health = EXAMPLES["health/1"]
    codec.check_topic(topics.parse(topic), health)
    other = topics.parse(topics.telemetry("demo", "someone-else", "health"))
    with pytest.raises(TopicError, match="published on the topic of device 'someone-else'"):
        codec.check_topic(other, health)
    wrong_stream = topics.parse(topics.telemetry("demo", health.device_id, "inference"))
    with pytest.raises(TopicError, match="may not be sent on"):
        codec.check_topic(wrong_stream, health)
    _, event = EXAMPLES["event/1"]
    with pytest.raises(TopicError, match="event of kind"):
        codec.check_topic(topics.parse(topics.event("demo", event.device_id, "other")), event)


def test_docs_show_every_schema_with_its_current_example() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "protocol.md").read_text()
    for schema, (topic, message) in EXAMPLES.items():
        assert f"### `{schema}`" in doc, f"docs/protocol.md lacks {schema}"
        assert topic in doc
        assert json.dumps(json.loads(codec.encode(message)), indent=2) in doc, schema
