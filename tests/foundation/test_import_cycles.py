"""No import circle between two modules of ours, counting imports made inside functions.

import-linter's ``acyclic_siblings`` contract (pyproject.toml) looks at subpackages as wholes;
this test looks at single modules, so a circle inside one package (``a.x -> a.y -> a.x``) fails
here even where the contract sees none. A lazy import inside a function still counts: it hides a
circle from the interpreter at import time, not from the reader.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _root_packages() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    packages: list[str] = config["root_packages"]
    return packages


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iteratively)."""
    modules = sorted(graph.modules)
    succ = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for start in modules:
        if start in index:
            continue
        work = [(start, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            nexts = succ[node]
            if i < len(nexts):
                work.append((node, i + 1))
                child = nexts[i]
                if child not in index:
                    work.append((child, 0))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def _describe(graph: grimp.ImportGraph, component: list[str]) -> str:
    members = set(component)
    edges = []
    for m in component:
        for target in sorted(graph.find_modules_directly_imported_by(m) & members):
            lines = graph.get_import_details(importer=m, imported=target)
            where = ", ".join(f"line {d['line_number']}" for d in lines)
            edges.append(f"    {m} -> {target} ({where})")
    return "\n".join(edges)


def test_a_circle_through_a_function_level_import_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check itself, on a real package: a -> b -> (inside a function) c -> a."""
    pkg = tmp_path / "circlepkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from circlepkg import b\n")
    (pkg / "b.py").write_text("def late():\n    from circlepkg import c\n")
    (pkg / "c.py").write_text("import circlepkg.a\n")
    (pkg / "d.py").write_text("import circlepkg.a\n")  # imports the circle, is not in it
    monkeypatch.syspath_prepend(str(tmp_path))
    graph = grimp.build_graph("circlepkg", cache_dir=None)
    cycles = _cycles(graph)
    assert cycles == [["circlepkg.a", "circlepkg.b", "circlepkg.c"]]
    assert "circlepkg.b -> circlepkg.c (line 2)" in _describe(graph, cycles[0])


def test_no_import_cycle_among_our_modules() -> None:
    graph = grimp.build_graph(*_root_packages(), cache_dir=None)
    cycles = _cycles(graph)
    message = "\n".join(
        f"import circle among {len(c)} modules:\n{_describe(graph, c)}" for c in cycles
    )
    assert not cycles, "move the shared types into a module that imports neither side\n" + message
