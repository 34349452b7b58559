"""The wheel holds only the `edgefleet` namespace; `import models` and `import edge` fail."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PARTS = ("edge", "cloud", "firmware_bridge", "models", "simulators")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(out),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (whl,) = out.glob("edgefleet-*.whl")
    return whl


def test_wheel_contains_only_the_edgefleet_namespace(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names}
    dist_info = {t for t in tops if t.endswith(".dist-info")}
    assert tops - dist_info == {"edgefleet"}, f"unexpected top-level entries: {tops}"
    # PEP 420: no __init__.py at the namespace root, or one portion would hide the others.
    assert "edgefleet/__init__.py" not in names
    for pkg in (
        "protocol",
        "edge",
        "cloud",
        "models",
        "simulators",
        "firmware_bridge",
        "signals",
        "runtime",
    ):
        assert f"edgefleet/{pkg}/__init__.py" in names, pkg
    assert "edgefleet/cli.py" in names
    assert not [n for n in names if "/tests/" in n or n.startswith("tests/")]
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA")))
    for extra in ("edge", "fl", "cloud", "sim", "all", "dev"):
        assert f"Provides-Extra: {extra}".encode() in metadata


def test_installed_wheel_imports_edgefleet_but_not_the_folders(wheel: Path, tmp_path: Path) -> None:
    # A bare venv whose only edgefleet is the wheel; third-party packages come from this venv's
    # site-packages through a .pth line (their .pth files, like the editable install's, are not
    # processed that way, so the checkout stays invisible).
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    zipfile.ZipFile(wheel).extractall(site)
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    probe = (
        "import importlib, json, sys\n"
        "import edgefleet.protocol, edgefleet.cli\n"
        "bad = []\n"
        f"for name in {PARTS!r}:\n"
        "    try:\n        importlib.import_module(name)\n        bad.append(name)\n"
        "    except ImportError:\n        pass\n"
        "print(json.dumps({'bad': bad, 'file': edgefleet.protocol.__file__}))\n"
    )
    # -I: no PYTHONPATH, no user site and no current directory on the path, as on a device.
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-I", "-c", probe],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert '"bad": []' in out.stdout
    assert str(site) in out.stdout
