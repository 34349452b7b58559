"""Bundle verifiers: in-process and in a child process agree on every verdict and reason."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.commit_acker import CommitAcker
from support.edge_agent import AgentThread, agent_toml, make_config
from support.tiny_models import TinyZoo, make_bundle, pack

from edgefleet.edge.verify import make_verifier
from edgefleet.protocol import errors
from edgefleet.protocol.manifest import SIGNATURE_FILE

MODES = ["process", "subprocess"]


@pytest.fixture(scope="module")
def bad_bundles(
    tiny_zoo: TinyZoo, signing_key: Ed25519PrivateKey, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[str, Path]]:
    """Bundles that must be refused, with the reason each must be refused for."""
    root = tmp_path_factory.mktemp("bad")
    out = {}
    b = make_bundle(tiny_zoo, root / "tampered", signing_key)
    data = bytearray((b.path / "model.tflite").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (b.path / "model.tflite").write_bytes(bytes(data))
    out["tampered"] = ("hash-mismatch", b.path)
    b = make_bundle(tiny_zoo, root / "unsigned", signing_key)
    (b.path / SIGNATURE_FILE).unlink()
    out["unsigned"] = ("unsigned", b.path)
    b = make_bundle(tiny_zoo, root / "wrongkey", Ed25519PrivateKey.generate())
    out["wrongkey"] = ("untrusted-key", b.path)
    b = make_bundle(tiny_zoo, root / "extra", signing_key)
    (b.path / "extra.bin").write_bytes(b"smuggled")
    out["extra"] = ("unexpected-file", b.path)
    return out


@pytest.mark.parametrize("mode", MODES)
def test_a_good_bundle_verifies_from_a_directory_and_an_archive(
    mode: str, good_bundle: Path, trusted_pub: Path, tmp_path: Path
) -> None:
    verifier = make_verifier(mode, [trusted_pub])
    direct = verifier.verify(good_bundle)
    assert direct.manifest.version == "1.0.0"
    assert direct.model_path.is_file()
    sha, _size = pack(direct, tmp_path / "b.tar.gz")  # type: ignore[arg-type]
    assert len(sha) == 64
    staged = verifier.unpack_and_verify(tmp_path / "b.tar.gz", tmp_path / "slot")
    assert staged.key_id == direct.key_id
    assert staged.manifest == direct.manifest
    assert staged.golden() is not None


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", ["tampered", "unsigned", "wrongkey", "extra"])
def test_bad_bundles_are_refused_with_the_same_reason_in_both_modes(
    mode: str, case: str, bad_bundles: dict[str, tuple[str, Path]], trusted_pub: Path
) -> None:
    want, path = bad_bundles[case]
    with pytest.raises(errors.BundleError) as info:
        make_verifier(mode, [trusted_pub]).verify(path)
    assert info.value.reason == want
    # The very class the protocol raises, not just the reason string.
    with pytest.raises(errors.BundleError) as ref:
        make_verifier("process", [trusted_pub]).verify(path)
    assert type(info.value) is type(ref.value)


def test_a_broken_key_file_is_a_typed_error_from_the_child(tmp_path: Path, good_bundle: Path):
    bad = tmp_path / "bad.pub"
    bad.write_text("not a key")
    with pytest.raises(errors.KeyFileError):
        make_verifier("subprocess", [bad]).verify(good_bundle)


def test_the_device_path_never_imports_cryptography_or_the_cli_stack() -> None:
    code = (
        "import sys\n"
        "import edgefleet.edge.launcher, edgefleet.edge.runner, edgefleet.edge.agent\n"
        "import edgefleet.edge.verify.isolated, edgefleet.edge.delivery\n"
        "heavy = ('cryptography', 'typer', 'rich', 'click', 'tarfile', 'tensorflow')\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & set(heavy)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.slow
def test_an_agent_verifying_in_a_subprocess_installs_and_serves(
    mosquitto, tmp_path: Path, good_bundle: Path, trusted_pub: Path
) -> None:
    acker = CommitAcker(mosquitto.host, mosquitto.port)
    text = agent_toml(
        tmp_path / "d", mosquitto.port, device="verify-sub", bundle=good_bundle, keys=[trusted_pub]
    ).replace("[model]\n", '[model]\nverify = "subprocess"\n')
    runner = AgentThread(make_config(text))
    try:
        runner.wait_ready()
        assert runner.agent.verifier is not None
        assert type(runner.agent.verifier).__name__ == "SubprocessVerifier"
        assert acker.wait_for(lambda a: a.inference_records("verify-sub") >= 10)
    finally:
        runner.stop()
        acker.close()
