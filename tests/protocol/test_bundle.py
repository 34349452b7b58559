"""Bundle signing and verification: every kind of tampering fails with its own reason."""

from __future__ import annotations

import contextlib
import io
import json
import os
import tarfile
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.protocol import bundle, signing
from edgefleet.protocol.errors import (
    BundleError,
    BundleUnsigned,
    HashMismatch,
    KeyFileError,
    ManifestInvalid,
    MissingFile,
    SignatureInvalid,
    UnexpectedFile,
    WrongKey,
)
from edgefleet.protocol.manifest import (
    MANIFEST_FILE,
    SIGNATURE_FILE,
    BundleManifest,
    FileRole,
    GoldenSpec,
    GoldenVectors,
    Lineage,
    Postprocessing,
    Preprocessing,
    QuantParams,
    TensorSpec,
    decode_manifest,
    encode_golden,
)

UPDATE = os.environ.get("EDGEFLEET_UPDATE_GOLDEN") == "1"


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return signing.generate_keypair(tmp_path / "keys")


@pytest.fixture
def signed(tmp_path: Path, keys: tuple[Path, Path]) -> Path:
    d = tmp_path / "bundle"
    d.mkdir()
    (d / "model.tflite").write_bytes(bytes(range(256)) * 8)
    (d / "golden.json").write_bytes(
        encode_golden(GoldenVectors(inputs={"x": [[1.0, 2.0]]}, outputs={"y": [[0.5]]}))
    )
    (d / "card.md").write_text("# tiny\n")
    manifest = BundleManifest(
        name="tiny",
        version="1.2.3",
        runtime="litert",
        model_file="model.tflite",
        inputs=[TensorSpec(name="x", dtype="float32", shape=[-1, 2])],
        outputs=[TensorSpec(name="y", dtype="float32", shape=[-1, 1])],
        golden=GoldenSpec(file="golden.json"),
    )
    bundle.write_bundle(d, manifest, signing.load_private_key(keys[0]), roles={"card.md": "card"})
    return d


def trusted(keys: tuple[Path, Path]) -> list:  # type: ignore[type-arg]
    return [signing.load_public_key(keys[1])]


def test_a_signed_bundle_verifies_and_lists_every_file(
    signed: Path, keys: tuple[Path, Path]
) -> None:
    vb = bundle.verify_bundle(signed, trusted(keys))
    assert vb.manifest.ref == "tiny@1.2.3"
    assert {f.path: f.role for f in vb.manifest.files} == {
        "card.md": "card",
        "golden.json": "golden",
        "model.tflite": "model",
    }
    golden = vb.golden()
    assert golden is not None
    assert golden.outputs == {"y": [[0.5]]}


@pytest.mark.parametrize("name", ["model.tflite", "golden.json", "card.md"])
def test_a_flipped_byte_in_any_file_fails(signed: Path, keys: tuple[Path, Path], name: str) -> None:
    data = bytearray((signed / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (signed / name).write_bytes(bytes(data))
    with pytest.raises(HashMismatch, match=f"{name} does not match its sha256") as info:
        bundle.verify_bundle(signed, trusted(keys))
    assert info.value.reason == "hash-mismatch"


def test_a_changed_manifest_field_fails_the_signature(
    signed: Path, keys: tuple[Path, Path]
) -> None:
    doc = json.loads((signed / "manifest.json").read_bytes())
    doc["version"] = "9.9.9"
    (signed / "manifest.json").write_text(json.dumps(doc, indent=2))
    with pytest.raises(SignatureInvalid, match="changed after signing") as info:
        bundle.verify_bundle(signed, trusted(keys))
    assert info.value.reason == "bad-signature"


def test_a_wrong_key_is_refused(signed: Path, tmp_path: Path) -> None:
    _, other_pub = signing.generate_keypair(tmp_path / "other")
    with pytest.raises(WrongKey, match="not trusted here") as info:
        bundle.verify_bundle(signed, [signing.load_public_key(other_pub)])
    assert info.value.reason == "untrusted-key"


def test_a_missing_file_is_refused(signed: Path, keys: tuple[Path, Path]) -> None:
    (signed / "card.md").unlink()
    with pytest.raises(MissingFile, match=r"card\.md is listed in the manifest") as info:
        bundle.verify_bundle(signed, trusted(keys))
    assert info.value.reason == "missing-file"


def test_an_unsigned_bundle_is_refused(signed: Path, keys: tuple[Path, Path]) -> None:
    (signed / "manifest.sig").unlink()
    with pytest.raises(BundleUnsigned, match=r"no manifest\.sig") as info:
        bundle.verify_bundle(signed, trusted(keys))
    assert info.value.reason == "unsigned"


def test_an_added_file_is_refused(signed: Path, keys: tuple[Path, Path]) -> None:
    (signed / "extra.onnx").write_bytes(b"surprise")
    with pytest.raises(UnexpectedFile, match=r"extra\.onnx"):
        bundle.verify_bundle(signed, trusted(keys))


def test_a_garbled_signature_file_is_refused(signed: Path, keys: tuple[Path, Path]) -> None:
    (signed / "manifest.sig").write_bytes(b"not json")
    with pytest.raises(SignatureInvalid, match="does not parse"):
        bundle.verify_bundle(signed, trusted(keys))


def test_the_reasons_are_all_distinct() -> None:
    kinds = [
        BundleUnsigned,
        SignatureInvalid,
        WrongKey,
        HashMismatch,
        MissingFile,
        UnexpectedFile,
        ManifestInvalid,
    ]
    assert len({k.reason for k in kinds}) == len(kinds)


def test_pack_is_reproducible_and_unpacks_to_a_verifiable_bundle(
    signed: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    sha1 = bundle.pack_bundle(signed, tmp_path / "a.tar.gz")
    sha2 = bundle.pack_bundle(signed, tmp_path / "b.tar.gz")
    assert sha1 == sha2 == bundle.sha256_file(tmp_path / "a.tar.gz")
    out = bundle.unpack_bundle(tmp_path / "a.tar.gz", tmp_path / "unpacked")
    assert bundle.verify_bundle(out, trusted(keys)).manifest.ref == "tiny@1.2.3"


def _tar_with(member: tarfile.TarInfo, data: bytes = b"") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.addfile(member, io.BytesIO(data) if data else None)
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["traversal", "symlink", "garbage"])
def test_hostile_archives_are_refused(tmp_path: Path, kind: str) -> None:
    archive = tmp_path / "evil.tar.gz"
    if kind == "traversal":
        info = tarfile.TarInfo("../../escape.txt")
        info.size = 3
        archive.write_bytes(_tar_with(info, b"bad"))
    elif kind == "symlink":
        info = tarfile.TarInfo("model.tflite")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        archive.write_bytes(_tar_with(info))
    else:
        archive.write_bytes(b"\x1f\x8b" + b"\x00" * 100)
    with pytest.raises(BundleError) as info_:
        bundle.unpack_bundle(archive, tmp_path / "out")
    assert info_.value.reason == "bad-archive"
    assert not (tmp_path / "escape.txt").exists()


def test_a_non_semver_version_is_refused_on_construction() -> None:
    with pytest.raises(ValueError, match="not semantic"):
        BundleManifest(
            name="tiny",
            version="latest",
            runtime="onnx",
            model_file="m.onnx",
            inputs=[TensorSpec(name="x", dtype="float32", shape=[1])],
            outputs=[TensorSpec(name="y", dtype="float32", shape=[1])],
        )


def test_a_manifest_naming_an_absent_model_file_is_refused_at_write(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    (tmp_path / "other.onnx").write_bytes(b"x")
    manifest = BundleManifest(
        name="tiny",
        version="1.0.0",
        runtime="onnx",
        model_file="m.onnx",
        inputs=[TensorSpec(name="x", dtype="float32", shape=[1])],
        outputs=[TensorSpec(name="y", dtype="float32", shape=[1])],
    )
    with pytest.raises(ManifestInvalid, match=r"model_file 'm\.onnx' is not among"):
        bundle.write_bundle(tmp_path, manifest, signing.load_private_key(keys[0]))


def test_bad_key_files_give_key_file_error(tmp_path: Path) -> None:
    (tmp_path / "junk.pem").write_text(
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
    )
    with pytest.raises(KeyFileError, match="not a PEM public key"):
        signing.load_public_key(tmp_path / "junk.pem")
    with pytest.raises(KeyFileError, match="cannot read private key"):
        signing.load_private_key(tmp_path / "absent.key")


# A bundle/1 manifest and signature, byte for byte, made with a fixed key kept for tests only
# (tests/golden/bundle/v1/keys). Ed25519 signatures are deterministic, so re-signing the same
# manifest with the same key gives the same manifest.sig: a changed encoding fails here before
# a device in the field refuses every bundle. Regenerate with EDGEFLEET_UPDATE_GOLDEN=1.
GOLDEN_BUNDLE = Path(__file__).parents[1] / "golden" / "bundle" / "v1"
GOLDEN_MANIFEST = BundleManifest(
    name="tiny",
    version="1.2.3",
    runtime="litert",
    model_file="model.tflite",
    quantization="int8",
    inputs=[
        TensorSpec(
            name="x",
            dtype="int8",
            shape=[-1, 2],
            quantization=QuantParams(scale=[0.5], zero_point=[-3]),
        )
    ],
    outputs=[TensorSpec(name="y", dtype="float32", shape=[-1, 1])],
    preprocessing=Preprocessing(
        channels=["ax", "ay"], window=2, hop=1, sample_rate_hz=50.0, mean=[0.0, 1.0], std=[1, 2]
    ),
    postprocessing=Postprocessing(kind="anomaly", threshold=0.75),
    labels=["normal", "anomaly"],
    metrics={"auc": 0.91},
    lineage=Lineage(parent="tiny@1.2.2", trained_by="federated", fl_rounds=3, fl_participants=2),
    golden=GoldenSpec(file="golden.json", match="allclose"),
    description="The golden bundle of the protocol tests.",
    created_at=1_790_000_000.0,
)
ROLES: dict[str, FileRole] = {"card.md": "card"}


def _golden_key() -> tuple[Path, Path]:
    keys = GOLDEN_BUNDLE / "keys"
    return keys / signing.PRIVATE_KEY_FILE, keys / signing.PUBLIC_KEY_FILE


def test_the_golden_bundle_is_re_signed_byte_for_byte(tmp_path: Path) -> None:
    private, public = _golden_key()
    golden = GOLDEN_BUNDLE / "tiny"
    if UPDATE:
        golden.mkdir(parents=True, exist_ok=True)
        (golden / "model.tflite").write_bytes(bytes(range(256)))
        (golden / "golden.json").write_bytes(
            encode_golden(GoldenVectors(inputs={"x": [[1, 2]]}, outputs={"y": [[0.25]]}))
        )
        (golden / "card.md").write_text("# tiny\n\nThe golden bundle of the protocol tests.\n")
        if not private.exists():
            signing.generate_keypair(private.parent)
        bundle.write_bundle(golden, GOLDEN_MANIFEST, signing.load_private_key(private), ROLES)
    work = tmp_path / "tiny"
    work.mkdir()
    for name in ("model.tflite", "golden.json", "card.md"):
        (work / name).write_bytes((golden / name).read_bytes())
    bundle.write_bundle(work, GOLDEN_MANIFEST, signing.load_private_key(private), ROLES)
    for name in (MANIFEST_FILE, SIGNATURE_FILE):
        assert (work / name).read_bytes() == (golden / name).read_bytes(), f"{name} changed"
    verified = bundle.verify_bundle(golden, [signing.load_public_key(public)])
    assert msgspec.structs.replace(verified.manifest, files=[]) == GOLDEN_MANIFEST
    assert [f.path for f in verified.manifest.files] == ["card.md", "golden.json", "model.tflite"]
    assert verified.key_id == signing.key_id(signing.load_public_key(public))


@given(st.binary(max_size=2048))
@settings(max_examples=300)
def test_random_bytes_give_a_manifest_or_manifest_invalid(data: bytes) -> None:
    with contextlib.suppress(ManifestInvalid):
        decode_manifest(data)


@given(st.binary(max_size=512))
@settings(max_examples=200)
def test_a_golden_manifest_with_random_bytes_spliced_in_only_raises_manifest_invalid(
    data: bytes,
) -> None:
    good = (GOLDEN_BUNDLE / "tiny" / MANIFEST_FILE).read_bytes()
    cut = len(data) % len(good)
    with contextlib.suppress(ManifestInvalid):
        decode_manifest(good[:cut] + data + good[cut:])
