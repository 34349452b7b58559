"""Encode/decode rate of edgefleet's codecs against plain `json.loads` and pydantic, one run.

Why msgspec: the protocol needs one schema library that validates on decode. This benchmark
decodes the same payloads with (a) plain `json.loads` (no validation: the floor every option is
compared against), (b) our JSON codec (msgspec: parse + validate + build frozen structs),
(c) our binary codec (msgspec MessagePack), and (d) the same schemas written as pydantic v2
models with a discriminated union. Metrics: decode_per_s_json, decode_per_s_binary,
decode_over_plain_json (= (b) / (a)), plus encode rates and pydantic's figures for the record.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal

import pydantic
from _common import emit

from edgefleet.protocol import codec
from edgefleet.protocol.examples import examples
from edgefleet.protocol.messages import Envelope, InferenceBatch, InferenceRecord


def _payloads() -> list[Envelope]:
    msgs = [m for _, m in examples()]
    # The bulk of real traffic: inference batches. Add a 20-record batch to the mix.
    records = [
        InferenceRecord(
            seq=100 + i,
            t=1.79e9 + i * 0.16,
            outputs=[0.01 * i, 1 - 0.01 * i],
            label="walk",
            score=0.93,
            latency_ms=0.05,
        )
        for i in range(20)
    ]
    msgs.append(
        InferenceBatch(
            device_id="pump-007",
            boot_id="b7f3a1c29e4d5f60",
            seq=100,
            sent_at=1.79e9,
            model="activity",
            model_version="1.0.0",
            records=records,
        )
    )
    return msgs


class _PEnv(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True)
    device_id: Annotated[
        str, pydantic.StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=64)
    ]
    boot_id: str
    seq: Annotated[int, pydantic.Field(ge=0)]
    sent_at: Annotated[float, pydantic.Field(ge=0)]


class _PRecord(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True)
    seq: int
    t: float
    outputs: list[float]
    label: str | None = None
    score: float | None = None
    latency_ms: float | None = None


class _PInference(_PEnv):
    schema_: Literal["inference/1"] = pydantic.Field(alias="schema")
    model: str
    model_version: str
    records: list[_PRecord]


class _PHealth(_PEnv):
    schema_: Literal["health/1"] = pydantic.Field(alias="schema")
    uptime_s: float
    agent_version: str = ""
    model: str | None = None
    model_version: str | None = None
    cpu_percent: float | None = None
    mem_rss_mb: float | None = None
    mem_available_mb: float | None = None
    temperature_c: float | None = None
    throttled: int | None = None
    inferences: int = 0
    latency_ms_p50: float | None = None
    latency_ms_p95: float | None = None
    latency_ms_p99: float | None = None
    outbox_depth: int = 0
    outbox_drops: int = 0


class _PAny(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="allow")
    schema_: str = pydantic.Field(alias="schema")


_PMessage = pydantic.TypeAdapter(
    Annotated[_PInference | _PHealth, pydantic.Field(discriminator="schema_")]
)


def _rate(fn: Callable[[Any], Any], payloads: list[Any], seconds: float = 1.5) -> float:
    """Messages per second for ``fn`` over ``payloads``, best of three timed rounds."""
    n = len(payloads)
    best = 0.0
    for _ in range(3):
        count, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds / 3:
            for p in payloads:
                fn(p)
            count += n
        best = max(best, count / elapsed)
    return best


def main() -> None:
    """Run the benchmark and print the JSON result line."""
    msgs = _payloads()
    as_json = [codec.encode(m, "json") for m in msgs]
    as_bin = [codec.encode(m, "msgpack") for m in msgs]
    py_subset = [
        p
        for p, m in zip(as_json, msgs, strict=True)
        if m.__struct_config__.tag in ("inference/1", "health/1")
    ]

    plain = _rate(json.loads, as_json)
    ours_json = _rate(codec.decode, as_json)
    ours_bin = _rate(codec.decode, as_bin)
    encode_json = _rate(codec.JSON.encode, msgs)
    encode_bin = _rate(codec.BINARY.encode, msgs)
    plain_subset = _rate(json.loads, py_subset)
    ours_subset = _rate(codec.decode, py_subset)
    pyd_subset = _rate(_PMessage.validate_json, py_subset)

    metrics = {
        "decode_per_s_json": round(ours_json),
        "decode_per_s_binary": round(ours_bin),
        "decode_per_s_plain_json": round(plain),
        "decode_over_plain_json": round(ours_json / plain, 3),
        "encode_per_s_json": round(encode_json),
        "encode_per_s_binary": round(encode_bin),
        "bytes_json_mean": round(sum(map(len, as_json)) / len(as_json)),
        "bytes_binary_mean": round(sum(map(len, as_bin)) / len(as_bin)),
        "pydantic_decode_per_s_subset": round(pyd_subset),
        "msgspec_decode_per_s_subset": round(ours_subset),
        "msgspec_over_pydantic": round(ours_subset / pyd_subset, 2),
        "pydantic_over_plain_json": round(pyd_subset / plain_subset, 3),
    }
    for name, value in metrics.items():
        print(f"{name:32s} {value}")
    emit("protocol_codec", metrics, ("msgspec", "pydantic"))


if __name__ == "__main__":
    main()
