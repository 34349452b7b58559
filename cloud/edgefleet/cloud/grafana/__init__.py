"""The Grafana dashboard shipped with edgefleet (``edgefleet.json``), importable as-is."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

DASHBOARD_FILE = "edgefleet.json"


def dashboard_path() -> Path:
    """Where the dashboard JSON lies in this installation (to copy or provision it)."""
    return Path(str(resources.files(__package__) / DASHBOARD_FILE))


def load_dashboard() -> dict[str, Any]:
    """The dashboard as a dict (Grafana's dashboard JSON model)."""
    data: dict[str, Any] = json.loads(dashboard_path().read_text(encoding="utf-8"))
    return data
