"""``edgefleet models``: list, build, verify, inspect and bench through the real CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.models_zoo import Zoo
from typer.testing import CliRunner

from edgefleet.cli import main
from edgefleet.models.cli import app
from edgefleet.protocol import signing
from edgefleet.protocol.bundle import pack_bundle, verify_bundle

runner = CliRunner()


def test_list_names_every_model() -> None:
    result = runner.invoke(app, ["list"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for name in ("vibration-anomaly", "activity", "digits"):
        assert name in result.output


def test_verify_directory_and_archive(zoo: Zoo, tmp_path: Path) -> None:
    bundle = zoo.builds["activity"].bundle("onnx")
    result = runner.invoke(app, ["verify", str(bundle), "--pubkey", str(zoo.public_key)])
    assert result.exit_code == 0, result.output
    assert "OK activity@1.0.0" in result.output
    assert "golden vectors reproduce" in result.output
    archive = tmp_path / "activity.tar.gz"
    pack_bundle(bundle, archive)
    result = runner.invoke(app, ["verify", str(archive), "--pubkey", str(zoo.public_key)])
    assert result.exit_code == 0, result.output


def test_verify_refusals_exit_with_the_bundle_status(
    zoo: Zoo, digits_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, other = signing.generate_keypair(tmp_path / "other")
    assert main(["models", "verify", str(digits_bundle), "--pubkey", str(other)]) == 5
    assert "not trusted" in capsys.readouterr().err
    (digits_bundle / "manifest.sig").unlink()
    assert main(["models", "verify", str(digits_bundle), "--pubkey", str(zoo.public_key)]) == 5
    assert "no manifest.sig" in capsys.readouterr().err


def test_inspect_shows_the_manifest(zoo: Zoo) -> None:
    bundle = zoo.builds["vibration-anomaly"].bundle("litert")
    result = runner.invoke(app, ["inspect", str(bundle)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for text in ("vibration-anomaly@1.0.0", "flatten", "anomaly", "parity_spearman", "golden"):
        assert text in result.output


def test_bench_reports_latency(zoo: Zoo) -> None:
    bundle = zoo.builds["digits"].bundle("litert")
    result = runner.invoke(
        app,
        ["bench", str(bundle), "--runs", "20", "--batch", "1", "--batch", "8"],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    assert "p50" in result.output
    assert "p95" in result.output
    assert "int8" in result.output
    model_bytes = (bundle / "model.tflite").stat().st_size
    bundle_bytes = sum(p.stat().st_size for p in bundle.iterdir() if p.is_file())
    assert f"model {model_bytes} B" in result.output
    assert f"bundle {bundle_bytes} B" in result.output
    assert bundle_bytes > model_bytes


def test_unknown_model_and_bad_options_are_refused(
    zoo: Zoo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = str(zoo.private_key)
    assert main(["models", "build", "nope", "--out", str(tmp_path / "a"), "--key", key]) == 4
    assert "no model named 'nope'" in capsys.readouterr().err
    args = ["models", "build", "digits", "--out", str(tmp_path / "b"), "--key", key]
    assert main([*args, "--runtime", "tvm"]) == 4
    assert main([*args, "--quantize", "int4"]) == 4
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    out = ["models", "build", "digits", "--out", str(tmp_path / "full"), "--key", key]
    assert main(out) == 4
    assert "not empty" in capsys.readouterr().err
    bad_key = tmp_path / "bad.key"
    bad_key.write_text("not a key")
    assert (
        main(["models", "build", "digits", "--out", str(tmp_path / "c"), "--key", str(bad_key)])
        == 4
    )


@pytest.mark.slow
def test_build_writes_a_signed_bundle_with_progress(zoo: Zoo, tmp_path: Path) -> None:
    out = tmp_path / "activity"
    result = runner.invoke(
        app,
        [
            "build",
            "activity",
            "--out",
            str(out),
            "--key",
            str(zoo.private_key),
            "--runtime",
            "onnx",
            "--epochs",
            "2",
            "--small",
            "--seed",
            "3",
            "--version",
            "2.0.0",
            "--pack",
        ],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    assert "training" in result.output
    assert "converting" in result.output
    bundle = verify_bundle(out, [signing.load_public_key(zoo.public_key)])
    assert bundle.manifest.ref == "activity@2.0.0"
    assert bundle.manifest.runtime == "onnx"
    assert bundle.manifest.metrics["epochs"] == 2
    assert (tmp_path / "activity.tar.gz").is_file()
