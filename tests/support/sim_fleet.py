"""Helpers for simulator tests: a bundle cache shared by xdist workers, CLI runs, reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest


def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One bundle cache for the whole test run (the cache's file lock serialises builds)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by every xdist worker of this run
    path = root / "sim-bundle-cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_cli(
    args: list[str], cache: Path, timeout: float = 280, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``edgefleet ARGS`` in a child process with the shared bundle cache (in ``cwd``)."""
    env = {**os.environ, "EDGEFLEET_CACHE_DIR": str(cache), "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("COLUMNS", None)  # the CLI's own width for output that is not a terminal
    return subprocess.run(
        [sys.executable, "-m", "edgefleet.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
        cwd=cwd,
    )


def read_report(path: Path) -> dict[str, Any]:
    """A report.json as a dict."""
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def invariant(report: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The invariant of a report whose name starts with ``prefix``."""
    for inv in report["invariants"]:
        if inv["name"].startswith(prefix):
            return dict(inv)
    raise AssertionError(f"no invariant {prefix!r} in {[i['name'] for i in report['invariants']]}")
