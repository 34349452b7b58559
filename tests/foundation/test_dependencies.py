"""Every third-party module our code imports is declared in pyproject.toml, in the right extra.

The dev venv holds every extra, so a missing declaration never shows in the other tests: an
`edgefleet[edge]` install once lacked click (imported by edgefleet.cli, until then brought by
typer). These tests read the imports from the source and the declarations from pyproject.toml.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from collections.abc import Iterable
from functools import cache
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

from edgefleet.cli import EXTRA_INCLUDES, MODULE_EXTRAS

ROOT = Path(__file__).resolve().parents[2]
SOURCE_ROOTS = ("edge", "cloud", "firmware_bridge", "models", "simulators")
# Files that run in another process with another extra: the Flower ClientApps run inside the
# SuperNode, which the `fl` extra installs (docs/federated.md).
RUNS_ELSEWHERE = {
    "edge/edgefleet/edge/fl/clientapp.py": "fl",
    "edge/edgefleet/edge/fl/secagg_clientapp.py": "fl",
}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@cache
def _project() -> dict[str, object]:
    project: dict[str, object] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project


def _requirements(extra: str | None) -> list[Requirement]:
    project = _project()
    if extra is None:
        raw = project["dependencies"]
    else:
        extras = project["optional-dependencies"]
        assert isinstance(extras, dict)
        raw = extras[extra]
    assert isinstance(raw, list)
    return [Requirement(r) for r in raw]


@cache
def _declared(extra: str | None) -> set[str]:
    """Distributions an extra (None: the core install) names directly or through its extras."""
    out: set[str] = set()
    for req in _requirements(extra):
        if _norm(req.name) == "edgefleet":
            for sub in req.extras:
                out |= _declared(sub)
            continue
        out.add(_norm(req.name))
        # `flwr[simulation]` brings ray: what an extra of a dependency declares counts too.
        for line in metadata.requires(req.name) or []:
            dep = Requirement(line)
            if dep.marker and any(dep.marker.evaluate({"extra": e}) for e in req.extras):
                out.add(_norm(dep.name))
    return out


def _third_party_imports(files: Iterable[Path]) -> dict[str, set[str]]:
    """Top-level third-party modules imported by ``files`` -> the files importing each."""
    found: dict[str, set[str]] = {}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top != "edgefleet" and top not in sys.stdlib_module_names:
                    found.setdefault(top, set()).add(path.relative_to(ROOT).as_posix())
    return found


@cache
def _installed() -> dict[str, list[str]]:
    return dict(metadata.packages_distributions())


def _dists(module: str) -> set[str]:
    dists = _installed().get(module)
    assert dists, f"{module} is not installed in the dev venv, so its distribution is unknown"
    return {_norm(d) for d in dists}


def _py(*folders: str) -> list[Path]:
    return [p for f in folders for p in sorted((ROOT / f).rglob("*.py"))]


def test_the_core_command_and_protocol_import_only_core_dependencies() -> None:
    files = [ROOT / "edge/edgefleet/cli.py", ROOT / "edge/edgefleet/keys_cli.py"]
    imports = _third_party_imports([*files, *_py("edge/edgefleet/protocol")])
    assert "click" in imports  # the import that once went undeclared
    core = _declared(None)
    undeclared = {m: f for m, f in imports.items() if not _dists(m) & core}
    assert not undeclared, f"imported but not in [project].dependencies: {undeclared}"


def test_the_device_side_imports_only_core_and_edge_dependencies() -> None:
    files = _py(
        "edge/edgefleet/edge", "edge/edgefleet/signals", "edge/edgefleet/runtime", "firmware_bridge"
    )
    allowed = _declared(None) | _declared("edge")
    undeclared = {}
    for module, users in _third_party_imports(files).items():
        elsewhere = {u for u in users if u in RUNS_ELSEWHERE}
        for user in elsewhere:
            assert _dists(module) & (allowed | _declared(RUNS_ELSEWHERE[user])), (module, user)
        if users - elsewhere and not _dists(module) & allowed:
            undeclared[module] = users - elsewhere
    assert not undeclared, f"an `edgefleet[edge]` install lacks: {undeclared}"


def test_every_optional_import_is_mapped_to_the_extra_that_declares_it() -> None:
    core = _declared(None)
    imports = _third_party_imports(_py(*SOURCE_ROOTS))
    unmapped = {m: f for m, f in imports.items() if not _dists(m) & core and m not in MODULE_EXTRAS}
    assert not unmapped, f"add these to edgefleet.cli.MODULE_EXTRAS: {unmapped}"
    wrong = {
        module: extra
        for module, extra in MODULE_EXTRAS.items()
        if not _dists(module) & _declared(extra)
    }
    assert not wrong, f"MODULE_EXTRAS names an extra that does not declare the module: {wrong}"


def test_extra_includes_match_pyproject() -> None:
    extras = _project()["optional-dependencies"]
    assert isinstance(extras, dict)

    def closure(extra: str) -> set[str]:
        out: set[str] = set()
        for req in _requirements(extra):
            if _norm(req.name) == "edgefleet":
                for sub in req.extras:
                    out |= {sub} | closure(sub)
        return out

    runtime = {e for e in extras if e != "dev"}
    assert set(EXTRA_INCLUDES) == runtime
    for extra in runtime:
        assert EXTRA_INCLUDES[extra] == closure(extra), extra
