"""The root command: version, lazy help, exit codes, and one clear line for a missing extra."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgefleet import cli
from edgefleet.cli import EXIT_CONFIG, EXIT_MISSING_EXTRA, EXIT_OK, EXIT_USAGE, Part, main
from edgefleet.protocol import signing

HEAVY = ("tensorflow", "keras", "flwr", "fastapi", "uvicorn", "onnxruntime", "sqlite_utils")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgefleet.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_version_prints_the_installed_version() -> None:
    out = _run("--version")
    assert out.returncode == EXIT_OK
    assert out.stdout.strip().startswith("edgefleet 0.")


def test_help_lists_every_part_and_imports_none_of_them() -> None:
    probe = (
        "import sys, json\n"
        "from edgefleet.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('edgefleet.'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    lines = out.stdout.strip().splitlines()
    for part in ("agent", "bridge", "models", "cloud", "fl", "sim", "demo", "keys"):
        assert f"  {part} " in out.stdout
    assert json.loads(lines[-2]) == []
    loaded = json.loads(lines[-1])
    assert not [m for m in loaded if m.split(".")[1] in ("edge", "cloud", "models", "simulators")]


def test_unknown_command_is_a_usage_error() -> None:
    assert _run("no-such-command").returncode == EXIT_USAGE


def test_missing_dependency_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "needs_absent_dep.py").write_text("import surely_not_installed_pkg\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.PARTS, "widget", Part("needs_absent_dep", "cloud", "test part"))
    code = main(["widget", "--help"])
    err = capsys.readouterr().err
    assert code == EXIT_MISSING_EXTRA
    assert "pip install 'edgefleet[cloud]'" in err
    assert "surely_not_installed_pkg" in err
    assert len(err.strip().splitlines()) == 1


def test_a_part_not_in_this_build_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(cli.PARTS, "later", Part("edgefleet.not_yet_written", "all", "later"))
    assert main(["later"]) == EXIT_MISSING_EXTRA
    assert "not part of this build" in capsys.readouterr().err


def test_keys_generate_then_refuse_to_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "generate", "--out", str(tmp_path)]) == EXIT_OK
    kid = signing.key_id(signing.load_public_key(tmp_path / signing.PUBLIC_KEY_FILE))
    assert kid in capsys.readouterr().out
    assert (tmp_path / signing.PRIVATE_KEY_FILE).stat().st_mode & 0o777 == 0o600
    assert main(["keys", "generate", "--out", str(tmp_path)]) == EXIT_CONFIG
    assert "already exists" in capsys.readouterr().err
    assert main(["keys", "show", str(tmp_path / signing.PRIVATE_KEY_FILE)]) == EXIT_OK
    assert capsys.readouterr().out.strip() == kid


def test_a_group_merges_commands_from_its_also_modules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for mod, cmd in (("grp_main", "build"), ("grp_more", "push")):
        (tmp_path / f"{mod}.py").write_text(
            "import typer\napp = typer.Typer()\n"
            f"@app.command()\ndef {cmd}() -> None:\n    print('{cmd} ran')\n"
            "@app.command()\ndef other() -> None:\n    pass\n"
        )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.PARTS, "grp", Part("grp_main", "cloud", "g", also=("grp_more",)))
    assert main(["grp", "push"]) == EXIT_OK
    assert "push ran" in capsys.readouterr().out
    assert main(["grp", "build"]) == EXIT_OK


def test_models_merges_push_and_assign_from_the_cloud_client(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # `models push`/`assign` live in edgefleet.cloud.models_cli, merged into the models group
    # only while typer hands back click groups (docs/dependencies.md, the typer bound).
    assert main(["models", "push", "--help"]) == EXIT_OK
    assert "edgefleet models push" in capsys.readouterr().out
    assert main(["models", "--help"]) == EXIT_OK
    listing = capsys.readouterr().out
    for sub in ("build", "verify", "push", "assign"):
        assert f" {sub} " in listing, sub


def _blocked(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the command with ``module`` made unimportable, as if its extra were not installed."""
    probe = (
        "import sys\n"
        f"sys.modules[{module!r}] = None\n"
        "from edgefleet.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", probe, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("module", "args", "extra"),
    [
        # Each part imports fine without the module; only running the command needs it.
        ("flwr", ("fl", "start", "--model", "digits", "--workdir", "fl"), "fl"),
        ("tensorflow", ("models", "build", "digits", "--out", "bundle", "--key", "KEY"), "cloud"),
        ("uvicorn", ("sim", "run", "--duration", "1", "--workdir", "sim"), "sim"),
    ],
)
def test_a_module_missing_at_run_time_names_the_extra(
    module: str, args: tuple[str, ...], extra: str, tmp_path: Path
) -> None:
    private, _ = signing.generate_keypair(tmp_path / "keys")
    key = str(private)
    out = _blocked(module, *(key if a == "KEY" else a for a in args), cwd=tmp_path)
    assert out.returncode == EXIT_MISSING_EXTRA, out.stderr
    assert out.stderr.strip().splitlines() == [
        f"error: `edgefleet {args[0]}` needs the '{extra}' extra: "
        f"pip install 'edgefleet[{extra}]' (missing module: {module})"
    ]


def test_sim_validate_without_pyyaml_is_a_missing_extra(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text("name: s\n")
    out = _blocked("yaml", "sim", "validate", "s.yaml", cwd=tmp_path)
    assert out.returncode == EXIT_MISSING_EXTRA, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert "pip install 'edgefleet[sim]'" in out.stderr


def test_a_missing_module_of_ours_or_of_python_is_not_an_extra() -> None:
    assert cli.missing_extra("fl", ModuleNotFoundError(name="edgefleet.nope")) is None
    assert cli.missing_extra("fl", ModuleNotFoundError(name="sqlite3")) is None
    # The part's own extra wins when it holds the module; else the module's extra is named.
    sim = cli.missing_extra("sim", ModuleNotFoundError(name="uvicorn.config"))
    agent = cli.missing_extra("agent", ModuleNotFoundError(name="flwr"))
    assert sim is not None
    assert "edgefleet[sim]" in str(sim)
    assert agent is not None
    assert "edgefleet[fl]" in str(agent)
