"""`make test` and `make demo` check their system packages first: named in seconds without root.

The script is run as an unprivileged user (nobody, through ``setpriv``, when the tests run as
root) so that it can never install anything here. A package is made missing the honest way: the
script looks commands up on PATH, then in ``EDGEFLEET_SBIN_PATH`` (the sbin folders), so a PATH
that links every command the tests need but one, and an empty sbin path, is a machine without it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / ".ci" / "system-packages"
# Every command the check probes by name, and bash to run it.
COMMANDS = (
    "bash",
    "gcc",
    "g++",
    "make",
    "mosquitto",
    "mosquitto_sub",
    "mosquitto_passwd",
    "systemd-analyze",
    "systemd-nspawn",
)
SBIN = "/usr/local/sbin:/usr/sbin:/sbin"
NOBODY = 65534
# Debian's python3 without python3-venv: it runs, but cannot `import ensurepip`.
PYTHON_WITHOUT_VENV = '#!/bin/sh\ncase "$2" in *ensurepip*) exit 1;; esac\nexit 0\n'


def _as_nobody() -> list[str]:
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.fail("setpriv is missing (util-linux): it runs the check as an unprivileged user")
    return [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A folder nobody can read (pytest's tmp_path is private to root)."""
    with tempfile.TemporaryDirectory(prefix="edgefleet-syspkg-") as name:
        os.chmod(name, 0o755)
        yield Path(name)


def _machine_without(folder: Path, left_out: str | None) -> dict[str, str]:
    """The environment of a machine that has every probed command but ``left_out``."""
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    for name in COMMANDS:
        if name == left_out:
            continue
        found = shutil.which(name) or shutil.which(name, path=SBIN)
        if found is None:
            pytest.fail(f"{name} is not on this machine; run .ci/system-packages test as root")
        (bin_dir / name).symlink_to(found)
    return {"PATH": str(bin_dir), "EDGEFLEET_SBIN_PATH": "", "HOME": str(folder)}


def _venv_with_python(folder: Path) -> str:
    """A stand-in VENV whose bin/python exists, so Python itself is not probed."""
    venv = folder / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to("/bin/sh")
    return str(venv)


def _python_without_venv(folder: Path) -> str:
    fake = folder / "python"
    fake.write_text(PYTHON_WITHOUT_VENV)
    fake.chmod(0o755)
    return str(fake)


def _run(cmd: list[str], env: dict[str, str]) -> tuple[int, str, float]:
    start = time.monotonic()
    out = subprocess.run(
        [*_as_nobody(), *cmd],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=30,
        check=False,
    )
    return out.returncode, out.stdout + out.stderr, time.monotonic() - start


@pytest.mark.parametrize(
    ("left_out", "package"),
    [("g++", "g++"), ("mosquitto_sub", "mosquitto-clients"), ("mosquitto", "mosquitto")],
)
def test_a_missing_package_stops_the_check_at_once_with_the_command_to_run(
    open_dir: Path, left_out: str, package: str
) -> None:
    env = _machine_without(open_dir, left_out) | {"VENV": _venv_with_python(open_dir)}
    code, output, took = _run([str(SCRIPT), "test"], env)
    assert code == 1, output
    assert took < 5, f"took {took:.1f} s"
    assert f"  {left_out} " in output
    assert f" package {package} " in output
    assert f"sudo apt-get install -y --no-install-recommends {package}\n" in output
    assert "installing" not in output


def test_a_python_without_venv_names_python3_venv(open_dir: Path) -> None:
    env = _machine_without(open_dir, None) | {"VENV": str(open_dir / "no-venv")}
    env["PYTHON"] = _python_without_venv(open_dir)
    code, output, took = _run([str(SCRIPT), "demo"], env)
    assert code == 1, output
    assert took < 5
    assert "sudo apt-get install -y --no-install-recommends python3-venv\n" in output


def test_with_everything_present_the_check_passes_quickly_and_installs_nothing(
    open_dir: Path,
) -> None:
    env = _machine_without(open_dir, None) | {"VENV": _venv_with_python(open_dir)}
    for goal in ("test", "demo"):
        code, output, took = _run([str(SCRIPT), goal], env)
        assert code == 0, output
        assert took < 5
        assert output.splitlines()[-1] == f"make {goal}: system packages present"
        assert "installing" not in output
        assert "missing" not in output


def test_the_demo_goes_on_without_mosquitto_and_says_so(open_dir: Path) -> None:
    env = _machine_without(open_dir, "mosquitto") | {"VENV": _venv_with_python(open_dir)}
    code, output, _ = _run([str(SCRIPT), "demo"], env)
    assert code == 0, output
    assert "note: mosquitto not found: the demo uses its embedded amqtt broker" in output


def test_an_unreachable_postgres_is_named_but_not_fatal(open_dir: Path) -> None:
    env = _machine_without(open_dir, None) | {"VENV": _venv_with_python(open_dir)}
    env["EDGEFLEET_TEST_PG"] = "postgresql://postgres@127.0.0.1:1/postgres"
    code, output, _ = _run([str(SCRIPT), "test"], env)
    assert code == 0, output
    assert "no PostgreSQL answers at 127.0.0.1:1" in output


def test_make_test_runs_the_check_before_it_makes_the_venv(open_dir: Path) -> None:
    venv = open_dir / "fresh-venv"
    # Run as a top-level make even when the suite itself runs under `make test` (as in CI):
    # an inherited MAKELEVEL makes make print "Entering directory" lines first.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    for jobs in ([], ["-j4"]):
        dry = subprocess.run(
            ["make", "-n", *jobs, "test", f"VENV={venv}"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.splitlines()
        assert dry[0].endswith(".ci/system-packages test"), dry[:3]
        assert any("-m venv" in line for line in dry[1:])


@pytest.mark.parametrize("goal", ["test", "test-fast", "demo"])
def test_make_stops_before_pip_when_a_package_is_missing(open_dir: Path, goal: str) -> None:
    # The tests need g++; the demo needs a Python that can make a venv.
    venv = open_dir / "fresh-venv"
    env = _machine_without(open_dir, "g++" if goal != "demo" else None)
    make = shutil.which("make")
    assert make is not None
    python = _python_without_venv(open_dir)
    code, output, took = _run([make, goal, f"VENV={venv}", f"PYTHON={python}"], env)
    assert code != 0, output
    assert took < 5, f"took {took:.1f} s"
    assert ("package g++ " if goal != "demo" else "package python3-venv ") in output
    assert f"-m venv {venv}" not in output  # the recipe lines make echoes
    assert f"{venv}/bin/python -m pip" not in output
    assert not venv.exists()
