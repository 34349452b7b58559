"""Shared helpers for the benchmarks: versions of what was measured and the JSON last line."""

from __future__ import annotations

import json
import platform
import sys
from importlib import metadata
from typing import Any


def versions(*packages: str) -> dict[str, str]:
    """Installed versions of ``packages`` plus Python and the machine, for the result line."""
    out = {"python": platform.python_version(), "machine": platform.machine()}
    for name in ("edgefleet", *packages):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def emit(bench: str, metrics: dict[str, Any], packages: tuple[str, ...] = ()) -> None:
    """Print the one-line JSON result that `make bench` and CI collect; it must come last."""
    line = {"bench": bench, "metrics": metrics, "versions": versions(*packages)}
    sys.stdout.flush()
    print(json.dumps(line, sort_keys=False))
