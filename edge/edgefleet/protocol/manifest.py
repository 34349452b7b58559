"""The model bundle manifest (schema ``bundle/1``): what a model is and how to check it.

A bundle is a directory (or a ``.tar.gz`` of one) holding the model files, ``manifest.json``
and ``manifest.sig``. The manifest lists the sha256 and size of every other file, and the
Ed25519 signature covers the manifest's exact bytes, so one signature vouches for every file.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from edgefleet.protocol.errors import ManifestInvalid
from edgefleet.protocol.messages import Id, Scalar, Timestamp

MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.sig"
MAX_MANIFEST_BYTES = 1024 * 1024
SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$"
)


def semver_key(version: str) -> tuple[int, int, int, int, tuple[tuple[int, int | str], ...]]:
    """A sort key for a semantic version (a pre-release sorts before its release)."""
    m = SEMVER.match(version)
    if m is None:
        raise ValueError(f"version {version!r} is not semantic (MAJOR.MINOR.PATCH)")
    core, _, rest = version.partition("+")[0].partition("-")
    major, minor, patch = (int(x) for x in core.split("."))
    if not rest:
        return major, minor, patch, 1, ()
    parts = tuple((0, int(p)) if p.isdigit() else (1, p) for p in rest.split("."))
    return major, minor, patch, 0, parts


DType = Literal["float32", "float16", "int8", "uint8", "int16", "int32", "int64", "bool"]
Runtime = Literal["litert", "onnx"]
FileRole = Literal["model", "train", "golden", "card", "labels", "other"]
Sha256 = Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]
# Relative POSIX paths inside the bundle, no '..' and no leading '/'.
RelPath = Annotated[
    str, Meta(pattern=r"^(?!/)(?!.*(?:^|/)\.\.(?:/|$))[A-Za-z0-9._/-]+$", max_length=255)
]


class QuantParams(Struct, frozen=True, kw_only=True):
    """Affine quantization ``real = scale * (q - zero_point)``; one entry per tensor or axis."""

    scale: list[float]
    zero_point: list[int]
    axis: int = 0

    def __post_init__(self) -> None:
        if not self.scale or len(self.scale) != len(self.zero_point):
            raise ValueError("quantization needs as many zero points as scales (at least one)")


class TensorSpec(Struct, frozen=True, kw_only=True):
    """Name, dtype and shape of a model input or output; -1 marks a free (batch) dimension."""

    name: str
    dtype: DType
    shape: list[int]
    quantization: QuantParams | None = None


class Preprocessing(Struct, frozen=True, kw_only=True):
    """How the agent turns samples into a model input.

    ``window`` samples of ``channels`` (hop ``hop``) form one window; each channel is
    standardised with ``mean``/``std`` when given; ``kind`` names the feature transform.
    """

    kind: Literal["window", "flatten", "none"] = "window"
    channels: list[str] = []
    window: Annotated[int, Meta(ge=0)] = 0
    hop: Annotated[int, Meta(ge=0)] = 0
    sample_rate_hz: float | None = None
    mean: list[float] = []
    std: list[float] = []


class Postprocessing(Struct, frozen=True, kw_only=True):
    """How the agent reads the output: a class label, an anomaly score, or raw values."""

    kind: Literal["classify", "anomaly", "raw"] = "raw"
    # anomaly: score above this is an anomaly; classify: minimum confidence to name a label.
    threshold: float | None = None


class FileEntry(Struct, frozen=True, kw_only=True):
    """One file of the bundle with the sha256 and size the signature vouches for."""

    path: RelPath
    sha256: Sha256
    size: Annotated[int, Meta(ge=0)]
    role: FileRole = "other"


class GoldenSpec(Struct, frozen=True, kw_only=True):
    """Where the golden vectors are and how close a device's outputs must come to them."""

    file: RelPath
    atol: float = 1e-5
    rtol: float = 1e-4
    # For classifiers the argmax must match even where int8 rounding moves the scores.
    match: Literal["allclose", "argmax"] = "allclose"


class GoldenVectors(Struct, frozen=True, kw_only=True):
    """Inputs and expected outputs per tensor name, as nested lists (no numpy needed)."""

    inputs: dict[str, list[object]]
    outputs: dict[str, list[object]]


class Lineage(Struct, frozen=True, kw_only=True):
    """Where a model version came from."""

    parent: str | None = None
    trained_by: Literal["central", "federated", "imported"] = "central"
    data_window: tuple[Timestamp, Timestamp] | None = None
    dataset: str | None = None
    fl_rounds: int | None = None
    fl_participants: int | None = None
    fl_strategy: str | None = None
    dp: dict[str, Scalar] = {}
    tools: dict[str, str] = {}


class BundleManifest(Struct, frozen=True, kw_only=True):
    """Everything a device needs to trust, load and smoke-test a model version."""

    schema: Literal["bundle/1"] = "bundle/1"
    name: Id
    version: str
    runtime: Runtime
    model_file: RelPath
    quantization: Literal["int8", "float16", "dynamic", "none"] = "none"
    inputs: Annotated[list[TensorSpec], Meta(min_length=1)]
    outputs: Annotated[list[TensorSpec], Meta(min_length=1)]
    preprocessing: Preprocessing = Preprocessing()
    postprocessing: Postprocessing = Postprocessing()
    labels: list[str] = []
    metrics: dict[str, float] = {}
    lineage: Lineage = Lineage()
    golden: GoldenSpec | None = None
    description: str = ""
    created_at: Timestamp = 0.0
    files: list[FileEntry] = []
    # After this time (seconds since the epoch, by the cloud's clock as the agent knows it)
    # the agent refuses to install the bundle; None: it does not expire.
    expires_at: Timestamp | None = None

    def __post_init__(self) -> None:
        if not SEMVER.match(self.version):
            raise ValueError(f"version {self.version!r} is not semantic (MAJOR.MINOR.PATCH)")
        paths = [f.path for f in self.files]
        if len(set(paths)) != len(paths):
            raise ValueError("a file is listed twice")
        if self.files and self.model_file not in paths:
            raise ValueError(f"model_file {self.model_file!r} is not among the listed files")
        if self.golden is not None and self.files and self.golden.file not in paths:
            raise ValueError(f"golden file {self.golden.file!r} is not among the listed files")

    @property
    def ref(self) -> str:
        """``name@version``, the way commands and the registry name a model."""
        return f"{self.name}@{self.version}"

    def file(self, path: str) -> FileEntry:
        """The entry for ``path``."""
        for entry in self.files:
            if entry.path == path:
                return entry
        raise KeyError(path)


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(BundleManifest)
_golden_decoder = msgspec.json.Decoder(GoldenVectors)


def encode_manifest(manifest: BundleManifest) -> bytes:
    """The manifest as the exact bytes that get signed (formatted JSON, stable key order)."""
    return msgspec.json.format(_encoder.encode(manifest), indent=2) + b"\n"


# What msgspec may raise besides its own DecodeError: RecursionError on values nested deeper than
# the stack (a few KB of brackets), the others on input that is not a plain byte buffer.
_DECODER_FAILURES = (RecursionError, BufferError, TypeError, ValueError, OverflowError)


def decode_manifest(data: bytes) -> BundleManifest:
    """Parse and validate manifest bytes, raising :class:`ManifestInvalid`."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestInvalid(f"manifest is {len(data)} bytes; the limit is {MAX_MANIFEST_BYTES}")
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise ManifestInvalid(f"manifest.json is not a valid bundle/1 manifest: {exc}") from None
    except _DECODER_FAILURES as exc:
        raise ManifestInvalid(
            f"manifest.json is not a valid bundle/1 manifest: {type(exc).__name__}: {exc}"
        ) from None


def encode_golden(golden: GoldenVectors) -> bytes:
    """Golden vectors as JSON bytes."""
    return _encoder.encode(golden)


def decode_golden(data: bytes) -> GoldenVectors:
    """Parse golden vectors, raising :class:`ManifestInvalid` on bad data."""
    try:
        return _golden_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise ManifestInvalid(f"golden vectors do not parse: {exc}") from None
    except _DECODER_FAILURES as exc:
        raise ManifestInvalid(f"golden vectors do not parse: {type(exc).__name__}: {exc}") from None
