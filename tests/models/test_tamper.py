"""Tampered, unsigned, incomplete or foreign-signed bundles fail with distinct typed errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.models_zoo import Zoo

from edgefleet.protocol import signing
from edgefleet.protocol.bundle import pack_bundle, unpack_bundle, verify_bundle
from edgefleet.protocol.errors import (
    BundleError,
    BundleUnsigned,
    HashMismatch,
    MissingFile,
    SignatureInvalid,
    UnexpectedFile,
    WrongKey,
)

PAYLOAD = ["model.tflite", "golden.json", "MODEL_CARD.md", "labels.txt"]


def _verify(bundle: Path, zoo: Zoo) -> None:
    verify_bundle(bundle, [signing.load_public_key(zoo.public_key)])


def _flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at % len(data)] ^= 0x01
    path.write_bytes(bytes(data))


def test_untouched_copy_verifies(digits_bundle: Path, zoo: Zoo) -> None:
    _verify(digits_bundle, zoo)


@pytest.mark.parametrize("name", PAYLOAD)
@pytest.mark.parametrize("where", [0, 777, -1])
def test_flipped_byte_in_a_payload_file(
    digits_bundle: Path, zoo: Zoo, name: str, where: int
) -> None:
    _flip(digits_bundle / name, where)
    with pytest.raises(HashMismatch, match=name):
        _verify(digits_bundle, zoo)


@pytest.mark.parametrize("where", [5, 300, -3])
def test_flipped_byte_in_the_manifest(digits_bundle: Path, zoo: Zoo, where: int) -> None:
    _flip(digits_bundle / "manifest.json", where)
    with pytest.raises(SignatureInvalid, match="changed after signing"):
        _verify(digits_bundle, zoo)


def test_flipped_byte_in_the_signature(digits_bundle: Path, zoo: Zoo) -> None:
    sig = json.loads((digits_bundle / "manifest.sig").read_text())
    raw = bytearray(__import__("base64").b64decode(sig["sig"]))
    raw[0] ^= 0x01
    sig["sig"] = __import__("base64").b64encode(bytes(raw)).decode()
    (digits_bundle / "manifest.sig").write_text(json.dumps(sig))
    with pytest.raises(SignatureInvalid):
        _verify(digits_bundle, zoo)


def test_changed_manifest_field(digits_bundle: Path, zoo: Zoo) -> None:
    path = digits_bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["postprocessing"]["threshold"] = 0.01
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    with pytest.raises(SignatureInvalid) as info:
        _verify(digits_bundle, zoo)
    assert info.value.reason == "bad-signature"


def test_wrong_key(digits_bundle: Path, zoo: Zoo, tmp_path: Path) -> None:
    _, other = signing.generate_keypair(tmp_path / "other")
    with pytest.raises(WrongKey, match="not trusted"):
        verify_bundle(digits_bundle, [signing.load_public_key(other)])


def test_missing_file(digits_bundle: Path, zoo: Zoo) -> None:
    (digits_bundle / "golden.json").unlink()
    with pytest.raises(MissingFile, match=r"golden\.json"):
        _verify(digits_bundle, zoo)


def test_unsigned_bundle(digits_bundle: Path, zoo: Zoo) -> None:
    (digits_bundle / "manifest.sig").unlink()
    with pytest.raises(BundleUnsigned, match=r"no manifest\.sig"):
        _verify(digits_bundle, zoo)


def test_extra_file(digits_bundle: Path, zoo: Zoo) -> None:
    (digits_bundle / "payload.so").write_bytes(b"\x7fELF")
    with pytest.raises(UnexpectedFile, match=r"payload\.so"):
        _verify(digits_bundle, zoo)


def test_each_failure_has_its_own_reason_and_message(zoo: Zoo, tmp_path: Path) -> None:
    import shutil

    source = zoo.builds["digits"].bundle("litert")
    _, other = signing.generate_keypair(tmp_path / "other")
    tampers = {
        "flip": lambda b: _flip(b / "model.tflite", 50),
        "field": lambda b: (b / "manifest.json").write_text(
            (b / "manifest.json").read_text().replace('"1.0.0"', '"9.0.0"')
        ),
        "missing": lambda b: (b / "labels.txt").unlink(),
        "unsigned": lambda b: (b / "manifest.sig").unlink(),
        "extra": lambda b: (b / "x.bin").write_bytes(b"x"),
    }
    seen: dict[str, tuple[str, str]] = {}
    for label, tamper in tampers.items():
        bundle = Path(shutil.copytree(source, tmp_path / label))
        tamper(bundle)
        with pytest.raises(BundleError) as info:
            _verify(bundle, zoo)
        seen[label] = (info.value.reason, str(info.value))
    with pytest.raises(BundleError) as info:
        verify_bundle(source, [signing.load_public_key(other)])
    seen["wrong-key"] = (info.value.reason, str(info.value))
    reasons = [r for r, _ in seen.values()]
    messages = [m for _, m in seen.values()]
    assert len(set(reasons)) == len(reasons) == 6, seen
    assert len(set(messages)) == 6


def test_archive_round_trip_and_tampered_archive(
    digits_bundle: Path, zoo: Zoo, tmp_path: Path
) -> None:
    archive = tmp_path / "b.tar.gz"
    pack_bundle(digits_bundle, archive)
    _verify(unpack_bundle(archive, tmp_path / "ok"), zoo)
    _flip(digits_bundle / "model.tflite", 100)
    pack_bundle(digits_bundle, tmp_path / "bad.tar.gz")
    with pytest.raises(HashMismatch):
        _verify(unpack_bundle(tmp_path / "bad.tar.gz", tmp_path / "bad"), zoo)
