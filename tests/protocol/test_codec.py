"""Codecs: golden files per schema version, round trips, and one typed error for bad bytes."""

from __future__ import annotations

import contextlib
import json
import math
import os
import struct
from pathlib import Path
from typing import Any

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
    MESSAGE_TYPES,
    SCHEMAS,
    AssignModel,
    CommandAck,
    Commit,
    CommitRange,
    DriftSketch,
    Event,
    FeatureSketch,
    Health,
    InferenceBatch,
    InferenceRecord,
    McuActuator,
    McuCommand,
    McuPing,
    McuReboot,
    McuSetSampleRate,
    ReadingBatch,
    ReadingRecord,
    SetConfig,
    StartTraining,
    Status,
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


def _deep_unknown_field(codec_name: str, depth: int) -> bytes:
    """A valid health/1 message plus an unknown field of ``depth`` nested arrays."""
    _, health = EXAMPLES["health/1"]
    if codec_name == "json":
        nested = b"[" * depth + b"]" * depth
        return codec.encode(health, "json")[:-1] + b',"x":' + nested + b"}"
    fields = msgspec.msgpack.decode(codec.encode(health, "msgpack")[2:])
    pack = msgspec.msgpack.encode
    body = b"".join(pack(k) + pack(v) for k, v in fields.items())
    # map16 header with one more entry, then fixarray(1) nested `depth` times around [].
    head = b"\xde" + struct.pack(">H", len(fields) + 1)
    return codec._BINARY_HEADER + head + body + pack("x") + b"\x91" * depth + b"\x90"


@pytest.mark.parametrize("codec_name", ["json", "msgpack"])
def test_an_unknown_field_nested_too_deep_is_a_decode_error(codec_name: str) -> None:
    _, health = EXAMPLES["health/1"]
    assert codec.decode(_deep_unknown_field(codec_name, 3)) == health
    payload = _deep_unknown_field(codec_name, 5000)
    assert len(payload) < 16 * 1024  # a small message, not a large one
    with pytest.raises(DecodeError, match="nest too deeply"):
        codec.decode(payload)
    with pytest.raises(DecodeError, match="nest too deeply"):
        codec.get_codec(codec_name).decode(payload)


@pytest.mark.parametrize("codec_name", ["json", "msgpack"])
def test_any_byte_view_of_a_payload_decodes_like_its_bytes(codec_name: str) -> None:
    _, batch = EXAMPLES["inference/1"]
    good = codec.encode(batch, codec_name)
    spaced = bytearray(len(good) * 2)
    spaced[::2] = good
    views: list[codec.Payload] = [
        bytearray(good),
        memoryview(good),
        memoryview(spaced)[::2],  # not contiguous: msgspec alone raises BufferError
        memoryview(bytearray(good)).cast("c"),
        memoryview(bytearray(good)).cast("b"),
    ]
    for view in views:
        assert codec.decode(view) == batch
        assert codec.get_codec(codec_name).decode(view) == batch


@pytest.mark.parametrize(
    "payload",
    [None, "{}", 5, [1], {"schema": "health/1"}, memoryview(bytearray(8)).cast("I")],
    ids=["none", "str", "int", "list", "dict", "int-view"],
)
def test_a_payload_that_is_not_bytes_is_a_decode_error(payload: Any) -> None:
    for decode in (codec.decode, codec.JSON.decode, codec.BINARY.decode):
        with pytest.raises(DecodeError):
            decode(payload)


@given(st.binary(max_size=512), st.integers(min_value=2, max_value=4))
@settings(max_examples=200)
def test_strided_views_of_random_bytes_only_raise_decode_error(data: bytes, step: int) -> None:
    for head in (b"{", b"\xef\x01"):
        spaced = bytearray(os.urandom((len(head) + len(data)) * step))
        spaced[::step] = head + data
        with contextlib.suppress(DecodeError):
            codec.decode(memoryview(spaced)[::step])


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
non_finite = st.sampled_from([math.nan, math.inf, -math.inf])
ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)
boot_ids = st.from_regex(r"[A-Za-z0-9_-]{1,20}", fullmatch=True)
seqs = st.integers(min_value=0, max_value=2**63 - 1)
counts = st.integers(min_value=0, max_value=2**63 - 1)
times = st.floats(min_value=0, max_value=4e9)
short = st.text(max_size=30)
versions = st.text(max_size=64)
scalars = st.dictionaries(
    st.text(max_size=10),
    st.none() | st.booleans() | st.integers(-(2**60), 2**60) | finite | st.text(max_size=20),
    max_size=5,
)


def _envelope(**fields: st.SearchStrategy[Any]) -> dict[str, st.SearchStrategy[Any]]:
    return {"device_id": ids, "boot_id": boot_ids, "seq": seqs, "sent_at": times, **fields}


def _command(**fields: st.SearchStrategy[Any]) -> dict[str, st.SearchStrategy[Any]]:
    return _envelope(command_id=ids, expires_at=st.none() | times, **fields)


@st.composite
def inference_batches(draw: st.DrawFn, values: st.SearchStrategy[float] = finite) -> InferenceBatch:
    first = draw(st.integers(min_value=0, max_value=2**40))
    n = draw(st.integers(min_value=1, max_value=20))
    records = [
        InferenceRecord(
            seq=first + i,
            t=draw(times),
            outputs=draw(st.lists(values, max_size=8)),
            label=draw(st.none() | st.text(max_size=10)),
            score=draw(st.none() | values),
            latency_ms=draw(st.none() | values),
        )
        for i in range(n)
    ]
    return InferenceBatch(
        device_id=draw(ids),
        boot_id=draw(boot_ids),
        seq=first,
        sent_at=draw(times),
        model=draw(ids),
        model_version=draw(versions),
        records=records,
    )


@st.composite
def reading_batches(draw: st.DrawFn, values: st.SearchStrategy[float] = finite) -> ReadingBatch:
    first = draw(st.integers(min_value=0, max_value=2**40))
    channels = draw(st.lists(ids, max_size=6))
    n = draw(st.integers(min_value=1, max_value=10))
    records = [
        ReadingRecord(
            seq=first + i,
            t=draw(times),
            values=draw(st.lists(values, min_size=len(channels), max_size=len(channels))),
        )
        for i in range(n)
    ]
    return ReadingBatch(
        device_id=draw(ids),
        boot_id=draw(boot_ids),
        seq=first,
        sent_at=draw(times),
        channels=channels,
        records=records,
    )


@st.composite
def feature_sketches(draw: st.DrawFn) -> FeatureSketch:
    bins = draw(st.integers(min_value=0, max_value=6))
    edges = sorted(draw(st.lists(finite, min_size=bins + 1, max_size=bins + 1))) if bins else []
    return FeatureSketch(
        name=draw(short),
        count=draw(counts),
        mean=draw(finite),
        std=draw(finite),
        min=draw(finite),
        max=draw(finite),
        bin_edges=edges,
        counts=draw(st.lists(counts, min_size=bins, max_size=bins)) if bins else [],
    )


mcu_actions = st.one_of(
    st.builds(McuSetSampleRate, hz=st.floats(min_value=1e-3, max_value=10_000)),
    st.builds(McuActuator, index=st.integers(0, 255), value=finite),
    st.builds(McuReboot),
    st.builds(McuPing),
)

# One strategy per message type; a type added to the protocol fails the coverage test below.
STRATEGIES: dict[type[Any], st.SearchStrategy[Any]] = {
    Status: st.builds(
        Status,
        **_envelope(
            state=st.sampled_from(["online", "offline"]),
            agent_version=versions,
            model=st.none() | short,
            model_version=st.none() | versions,
            reason=st.none() | st.sampled_from(["start", "shutdown", "lwt"]),
        ),
    ),
    Health: st.builds(
        Health,
        **_envelope(
            uptime_s=st.floats(0, 1e9),
            agent_version=versions,
            model=st.none() | short,
            cpu_percent=st.none() | finite,
            temperature_c=st.none() | finite,
            throttled=st.none() | st.integers(0, 2**32 - 1),
            inferences=counts,
            latency_ms_p99=st.none() | finite,
            outbox_depth=counts,
        ),
    ),
    InferenceBatch: inference_batches(),
    ReadingBatch: reading_batches(),
    DriftSketch: st.builds(
        DriftSketch,
        **_envelope(
            model=short,
            model_version=versions,
            window_start=times,
            window_end=times,
            features=st.lists(feature_sketches(), max_size=4),
        ),
    ),
    Event: st.builds(
        Event,
        **_envelope(
            kind=ids,
            level=st.sampled_from(["debug", "info", "warning", "error", "critical"]),
            message=st.text(max_size=100),
            data=scalars,
        ),
    ),
    CommandAck: st.builds(
        CommandAck,
        **_envelope(
            command_id=ids,
            command=ids,
            status=st.sampled_from(["received", "succeeded", "failed", "refused"]),
            reason=st.none() | short,
            detail=st.none() | st.text(max_size=100),
            data=scalars,
        ),
    ),
    AssignModel: st.builds(
        AssignModel,
        **_command(
            model=ids,
            version=versions,
            url=st.text(max_size=200),
            sha256=st.from_regex(r"[0-9a-f]{64}", fullmatch=True),
            size=counts,
            runtime=st.none() | st.sampled_from(["litert", "onnx"]),
            rollout_id=st.none() | short,
        ),
    ),
    SetConfig: st.builds(SetConfig, **_command(values=scalars)),
    StartTraining: st.builds(
        StartTraining,
        **_command(
            model=ids,
            superlink=short,
            run_id=st.none() | short,
            rounds=st.none() | st.integers(1, 10**6),
            deadline_s=st.none() | st.floats(min_value=1e-3, max_value=1e9),
        ),
    ),
    McuCommand: st.builds(McuCommand, **_command(action=mcu_actions)),
    Commit: st.builds(
        Commit,
        **_envelope(
            ranges=st.lists(
                st.builds(lambda a, b: CommitRange("b1", min(a, b), max(a, b)), seqs, seqs),
                min_size=1,
                max_size=5,
            ),
        ),
    ),
}


def test_the_round_trip_covers_every_message_type() -> None:
    assert set(STRATEGIES) == set(MESSAGE_TYPES)


@given(st.one_of(*STRATEGIES.values()), st.sampled_from(["json", "msgpack"]))
@settings(max_examples=600)
def test_round_trip_through_either_codec(message: msgspec.Struct, codec_name: str) -> None:
    assert codec.decode(codec.encode(message, codec_name)) == message  # type: ignore[arg-type]


def _as_null(value: float | None) -> float | None:
    return value if value is None or math.isfinite(value) else None


@given(
    st.one_of(
        inference_batches(values=finite | non_finite), reading_batches(values=finite | non_finite)
    )
)
@settings(max_examples=200)
def test_non_finite_numbers_arrive_as_null_whichever_codec_carried_them(
    batch: InferenceBatch | ReadingBatch,
) -> None:
    if isinstance(batch, InferenceBatch):
        records: list[Any] = [
            msgspec.structs.replace(
                r,
                outputs=[_as_null(v) for v in r.outputs],
                score=_as_null(r.score),
                latency_ms=_as_null(r.latency_ms),
            )
            for r in batch.records
        ]
    else:
        records = [
            msgspec.structs.replace(r, values=[_as_null(v) for v in r.values])
            for r in batch.records
        ]
    expected = msgspec.structs.replace(batch, records=records)
    assert codec.decode(codec.encode(batch, "json")) == expected
    assert codec.decode(codec.encode(batch, "msgpack")) == expected


@pytest.mark.parametrize("codec_name", ["json", "msgpack"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_number_where_null_is_not_allowed_is_refused_by_both_codecs(
    codec_name: str, bad: float
) -> None:
    _, health = EXAMPLES["health/1"]
    _, drift = EXAMPLES["drift/1"]
    sketch = msgspec.structs.replace(drift.features[0], mean=bad)
    cases = [
        (msgspec.structs.replace(health, uptime_s=bad), r"\$\.uptime_s"),
        (msgspec.structs.replace(drift, features=[sketch]), r"\$\.features\[0\]\.mean"),
    ]
    for message, where in cases:
        with pytest.raises(InvalidMessage, match=where):
            codec.decode(codec.encode(message, codec_name))


def test_binary_carries_nan_as_a_float64_and_reads_it_as_json_does() -> None:
    _, batch = EXAMPLES["inference/1"]
    first = msgspec.structs.replace(batch.records[0], outputs=[math.nan, 1.0])
    batch = msgspec.structs.replace(batch, records=[first, *batch.records[1:]])
    raw = codec.encode(batch, "msgpack")
    assert b"\xcb\x7f\xf8" in raw  # NaN on the wire, not nil: encoding costs no scan
    decoded = codec.decode(raw)
    assert isinstance(decoded, InferenceBatch)
    assert list(decoded.records[0].outputs) == [None, 1.0]
    assert decoded == codec.decode(codec.encode(batch, "json"))


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
