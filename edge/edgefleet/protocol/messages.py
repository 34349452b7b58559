"""Every message of protocol ``edgefleet/v1``, as frozen msgspec structs that validate on decode.

Each payload carries the envelope: ``schema`` (family/version, e.g. ``health/1``),
``device_id`` (the node that sent it: a device, or the cloud's node id), ``boot_id``,
``seq`` and ``sent_at``. Within a version, schemas only *add* fields with defaults, and
decoders ignore fields they do not know, so old clouds read new devices and vice versa.

Records and identity: every record a device produces (a health sample, an inference result, a
sketch, an event) takes one ``(boot_id, seq)`` from the device's sequencer. A message that
carries one record uses that pair as its envelope; a batch holds records of one boot, its
envelope names that boot and the first record's seq, and each record carries its own ``seq``.
The cloud dedupes on ``(device_id, boot_id, seq)`` of records and answers with a
:class:`Commit` listing what it committed; only then may the device delete those records.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Literal

from msgspec import Meta, Struct

from edgefleet.protocol.topics import MAX_ID_LENGTH

Id = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=MAX_ID_LENGTH)]
BootId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]+$", min_length=1, max_length=64)]
Seq = Annotated[int, Meta(ge=0, le=2**63 - 1)]
# Counts and masks are bounded to what a signed 64-bit SQL column holds: a larger value must
# fail validation here, not the store's INSERT of a whole batch.
Count = Annotated[int, Meta(ge=0, le=2**63 - 1)]
# Seconds since the Unix epoch by the sender's wall clock. A Pi without a real-time clock may
# be far off until NTP syncs: order by (boot_id, seq), never by these.
Timestamp = Annotated[float, Meta(ge=0)]
Text = Annotated[str, Meta(max_length=4096)]
Version = Annotated[str, Meta(max_length=64)]
# A channel, label, runtime or task name inside a device profile.
Name = Annotated[str, Meta(max_length=128)]
Scalar = str | int | float | bool | None
# A model output or a sensor value: null on the wire stands for NaN or an infinity, which JSON
# cannot carry (docs/protocol.md, "Numbers"). A Sequence, so that producers pass list[float].
Values = Sequence[float | None]
MAX_BATCH = 1000
# A command's target: a device id, or the broadcast level `_all`.
Target = Annotated[
    str, Meta(pattern=r"^(_all|[A-Za-z0-9][A-Za-z0-9._-]*)$", max_length=MAX_ID_LENGTH)
]
# An Ed25519 signature (64 bytes) or an HMAC-SHA256 (32 bytes), base64url without padding.
SigText = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]*$", max_length=128)]


class Auth(Struct, frozen=True, kw_only=True):
    """Who vouches for a message (docs/protocol.md, "Signatures and MACs").

    Commands carry a signature by the cloud's command key (``ed25519``) or, for a commit-ack,
    a MAC by the device's record key (``hmac-sha256``); device messages carry that MAC. The
    signed bytes are the payload itself with ``sig`` emptied, so ``sig`` is the first field of
    the first field after ``schema``, where a verifier finds it without decoding
    (:mod:`edgefleet.protocol.commandauth`).
    """

    sig: SigText = ""
    alg: Literal["ed25519", "hmac-sha256"]
    # ed25519: the signing key's id (edgefleet.protocol.signing.key_id); hmac: the device id.
    key_id: Annotated[str, Meta(max_length=64)]
    # Commands only: the device the command is for, or "_all" for a fleet broadcast.
    target: Target | None = None
    # Commands only: the signing instance (one per cloud process) and its sequence number,
    # strictly increasing per signer; the agent keeps a sliding window per signer (replays).
    signer: Id | None = None
    cseq: Seq | None = None
    # Commands only: the cloud's clock when it signed, and when the command stops being valid.
    issued_at: Timestamp | None = None
    expires_at: Timestamp | None = None


class Envelope(Struct, frozen=True, kw_only=True, tag_field="schema"):
    """Fields every edgefleet payload carries; the ``schema`` tag comes from the subclass."""

    # First, so that it is encoded right after ``schema`` (see Auth); None: not authenticated.
    auth: Auth | None = None
    device_id: Id
    boot_id: BootId
    seq: Seq
    sent_at: Timestamp


# ---------------------------------------------------------------- device → cloud


class DeviceProfile(Struct, frozen=True, kw_only=True):
    """What a device offers a model: its source, its runtimes and the task it serves now.

    Sent in the retained birth (``Status.profile``). ``task`` and ``labels`` describe the
    model of the same status message (``Status.model``/``model_version``): ``task`` is
    ``None`` while the device serves no model, and then any task fits. Other ``None`` fields
    are unknown, not empty.
    """

    channels: Annotated[list[Name], Meta(max_length=1024)] | None = None
    sample_rate_hz: Annotated[float, Meta(gt=0, le=1e9)] | None = None
    runtimes: Annotated[list[Name], Meta(max_length=16)] | None = None
    task: Name | None = None
    labels: Annotated[list[Name], Meta(max_length=4096)] | None = None


class Status(Envelope, frozen=True, kw_only=True, tag="status/1"):
    """Retained birth ("online") or will / shutdown ("offline") of a device."""

    state: Literal["online", "offline"]
    agent_version: Version = ""
    model: str | None = None
    model_version: Version | None = None
    # "start", "shutdown", "lwt" (broker-published will: the device died or lost its link)
    reason: Literal["start", "shutdown", "lwt"] | None = None
    # What the device offers a model (edgefleet.protocol.compat); None from older agents.
    profile: DeviceProfile | None = None


class Health(Envelope, frozen=True, kw_only=True, tag="health/1"):
    """Periodic health sample of a device and its agent (stream ``health``)."""

    uptime_s: Annotated[float, Meta(ge=0)]
    agent_version: Version = ""
    model: str | None = None
    model_version: Version | None = None
    cpu_percent: float | None = None
    mem_rss_mb: float | None = None
    mem_available_mb: float | None = None
    temperature_c: float | None = None
    # Raspberry Pi `get_throttled` bit mask (under-voltage, frequency cap, throttling).
    throttled: Annotated[int, Meta(ge=0, le=2**32 - 1)] | None = None
    inferences: Count = 0
    latency_ms_p50: float | None = None
    latency_ms_p95: float | None = None
    latency_ms_p99: float | None = None
    outbox_depth: Count = 0
    outbox_drops: Count = 0
    # Commands refused by their authentication, by reason ("unsigned", "bad-signature",
    # "wrong-device", "replayed", "expired", "no-command-keys"), since the agent started.
    commands_refused: dict[str, Count] = {}
    # Why this agent cannot accept any command (no [trust] command_keys); None when it can.
    trust_error: Text | None = None


class InferenceRecord(Struct, frozen=True, kw_only=True):
    """One model output for one window."""

    seq: Seq
    t: Timestamp
    outputs: Annotated[Values, Meta(max_length=4096)]
    label: str | None = None
    score: float | None = None
    latency_ms: float | None = None


class InferenceBatch(Envelope, frozen=True, kw_only=True, tag="inference/1"):
    """A batch of inference results of one model, one boot (stream ``inference``)."""

    model: str
    model_version: Version
    records: Annotated[list[InferenceRecord], Meta(min_length=1, max_length=MAX_BATCH)]

    def __post_init__(self) -> None:
        if self.records[0].seq != self.seq:
            raise ValueError("a batch's envelope seq must be the seq of its first record")


class ReadingRecord(Struct, frozen=True, kw_only=True):
    """One timestamped sample of all channels of a sensor stream."""

    seq: Seq
    t: Timestamp
    values: Annotated[Values, Meta(max_length=1024)]


class ReadingBatch(Envelope, frozen=True, kw_only=True, tag="readings/1"):
    """Raw or preprocessed sensor samples (any stream other than the named ones)."""

    channels: list[str]
    records: Annotated[list[ReadingRecord], Meta(min_length=1, max_length=MAX_BATCH)]

    def __post_init__(self) -> None:
        if self.records[0].seq != self.seq:
            raise ValueError("a batch's envelope seq must be the seq of its first record")
        width = len(self.channels)
        if any(len(r.values) != width for r in self.records):
            raise ValueError(f"every record must hold {width} values, one per channel")


class FeatureSketch(Struct, frozen=True, kw_only=True):
    """Summary of one input feature or model output over a window, for drift detection."""

    name: str
    count: Count
    mean: float
    std: float
    min: float
    max: float
    bin_edges: list[float] = []
    counts: list[Count] = []

    def __post_init__(self) -> None:
        if self.bin_edges and len(self.counts) != len(self.bin_edges) - 1:
            raise ValueError("a histogram needs one count per bin: len(counts) = len(edges) - 1")


class DriftSketch(Envelope, frozen=True, kw_only=True, tag="drift/1"):
    """Feature and score sketches over a window of inputs (stream ``drift``)."""

    model: str
    model_version: Version
    window_start: Timestamp
    window_end: Timestamp
    features: list[FeatureSketch]


class Event(Envelope, frozen=True, kw_only=True, tag="event/1"):
    """Something that happened on a device, published on ``event/{kind}``."""

    kind: Id
    level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    message: Text = ""
    data: dict[str, Scalar] = {}


class CommandAck(Envelope, frozen=True, kw_only=True, tag="cmd-ack/1"):
    """A device's answer to a command, on ``cmd/{name}/ack``."""

    command_id: Id
    command: Id
    status: Literal["received", "succeeded", "failed", "refused"]
    # A stable code a program can branch on ("bad-signature", "hash-mismatch", ...).
    reason: str | None = None
    detail: Text | None = None
    data: dict[str, Scalar] = {}


# ---------------------------------------------------------------- cloud → device


class Command(Envelope, frozen=True, kw_only=True):
    """Base of commands; ``command_id`` is what the device's ack refers to."""

    command_id: Id
    expires_at: Timestamp | None = None


class AssignModel(Command, frozen=True, kw_only=True, tag="assign-model/1"):
    """Download, verify and activate a model bundle (``cmd/assign-model``)."""

    model: Id
    version: Version
    url: Annotated[str, Meta(max_length=2048)]
    sha256: Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]
    size: Count
    runtime: Literal["litert", "onnx"] | None = None
    # The rollout and wave this assignment belongs to, if any (staged rollout builds on it).
    rollout_id: str | None = None
    # The operator repurposes the device: another task or label set than it serves now.
    allow_task_change: bool = False
    # The operator assigns an older version on purpose; without it the agent refuses a
    # version older than the one it serves (downgrade protection).
    rollback: bool = False


class SetConfig(Command, frozen=True, kw_only=True, tag="set-config/1"):
    """Change run-time settings of an agent (``cmd/set-config``)."""

    values: dict[str, Scalar]


class StartTraining(Command, frozen=True, kw_only=True, tag="start-training/1"):
    """Ask a device to join federated training (``cmd/start-training``)."""

    model: Id
    superlink: str
    run_id: str | None = None
    rounds: Annotated[int, Meta(ge=1)] | None = None
    deadline_s: Annotated[float, Meta(gt=0)] | None = None


class McuSetSampleRate(Struct, frozen=True, kw_only=True, tag_field="op", tag="set-sample-rate"):
    """MCU action: sample at ``hz`` from now on."""

    hz: Annotated[float, Meta(gt=0, le=10_000)]


class McuActuator(Struct, frozen=True, kw_only=True, tag_field="op", tag="actuator"):
    """MCU action: drive actuator ``index`` (a relay, a PWM output) to ``value``."""

    index: Annotated[int, Meta(ge=0, le=255)]
    value: float

    def __post_init__(self) -> None:
        # msgpack carries NaN and infinities; a sketch's (int)NaN is undefined behaviour.
        if not math.isfinite(self.value):
            raise ValueError("an actuator value must be finite")


class McuReboot(Struct, frozen=True, kw_only=True, tag_field="op", tag="reboot"):
    """MCU action: reset the microcontroller."""


class McuPing(Struct, frozen=True, kw_only=True, tag_field="op", tag="ping"):
    """MCU action: answer and do nothing else (a link check)."""


McuAction = McuSetSampleRate | McuActuator | McuReboot | McuPing


class McuCommand(Command, frozen=True, kw_only=True, tag="mcu/1"):
    """Forward one action to the device's microcontroller (``cmd/mcu``, serial source only).

    The agent acks ``succeeded`` once the MCU acked it, ``failed`` (reason ``nack`` or
    ``no-ack``) when it refused or never answered, ``refused`` (``no-mcu``) without an MCU.
    """

    action: McuAction


class CommitRange(Struct, frozen=True, array_like=True):
    """Records ``first..last`` (inclusive) of one boot that the cloud has committed."""

    boot_id: BootId
    first: Seq
    last: Seq

    def __post_init__(self) -> None:
        if self.last < self.first:
            raise ValueError("a commit range needs first <= last")


class Commit(Envelope, frozen=True, kw_only=True, tag="commit/1"):
    """The cloud's ingest commit-ack (``cmd/commit``): these records are stored durably.

    A broker's PUBACK is not durability; this is. The device may delete exactly the records the
    ranges cover, and keeps (and resends) everything else.
    """

    ranges: Annotated[list[CommitRange], Meta(min_length=1)]


Message = (
    Status
    | Health
    | InferenceBatch
    | ReadingBatch
    | DriftSketch
    | Event
    | CommandAck
    | AssignModel
    | SetConfig
    | StartTraining
    | McuCommand
    | Commit
)
MESSAGE_TYPES: tuple[type[Envelope], ...] = (
    Status,
    Health,
    InferenceBatch,
    ReadingBatch,
    DriftSketch,
    Event,
    CommandAck,
    AssignModel,
    SetConfig,
    StartTraining,
    McuCommand,
    Commit,
)
SCHEMAS: dict[str, type[Envelope]] = {str(t.__struct_config__.tag): t for t in MESSAGE_TYPES}
COMMANDS: dict[str, type[Envelope]] = {
    "assign-model": AssignModel,
    "set-config": SetConfig,
    "start-training": StartTraining,
    "mcu": McuCommand,
    "commit": Commit,
}
# Named telemetry streams and their payload type; any other stream carries ReadingBatch.
STREAMS: dict[str, type[Envelope]] = {
    "health": Health,
    "inference": InferenceBatch,
    "drift": DriftSketch,
}


def record_seqs(msg: Envelope) -> list[int]:
    """The record seqs a device message carries (batches: one per record; others: the seq)."""
    if isinstance(msg, InferenceBatch | ReadingBatch):
        return [r.seq for r in msg.records]
    return [msg.seq]


def ranges_of(boot_id: str, seqs: list[int]) -> list[CommitRange]:
    """Compress committed seqs of one boot into the fewest inclusive ranges."""
    out: list[CommitRange] = []
    start = prev = None
    for s in sorted(set(seqs)):
        if prev is not None and s == prev + 1:
            prev = s
            continue
        if start is not None and prev is not None:
            out.append(CommitRange(boot_id, start, prev))
        start = prev = s
    if start is not None and prev is not None:
        out.append(CommitRange(boot_id, start, prev))
    return out
