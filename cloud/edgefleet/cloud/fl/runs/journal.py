"""Federated runs kept on disk, so ``GET /v1/fl/runs`` survives a restart of the cloud.

Each run's directory (``<fl workdir>/<run id>/``) already holds its trainable model, rounds
and bundle; ``run.json`` beside them is the run's record, rewritten atomically at every state
change and round. A cloud that starts finds the records; a run that was not done when the
cloud stopped cannot be resumed (its SuperLink died with the cloud), so it is loaded as
``failed`` with reason ``interrupted``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from edgefleet.cloud.fl.runs.run import FlRun, FlRunRequest
from edgefleet.protocol.errors import EdgefleetError

log = logging.getLogger(__name__)
RECORD = "run.json"
FORMAT = 1


class RunJournal:
    """Reads and writes ``run.json`` records under one directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, run_id: str) -> Path:
        """Where ``run_id``'s record lives."""
        return self.root / run_id / RECORD

    def save(self, run: FlRun) -> None:
        """Write the run's record atomically (a crash leaves the old or the new one)."""
        path = self.path(run.id)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps(_to_record(run), indent=1, allow_nan=False, default=_jsonable)
        fd, tmp = tempfile.mkstemp(prefix=".run-", suffix=".json", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def load(self) -> Iterator[FlRun]:
        """Every readable record; unfinished runs come back failed (``interrupted``)."""
        if not self.root.is_dir():
            return
        for path in sorted(self.root.glob(f"*/{RECORD}")):
            try:
                run = _from_record(json.loads(path.read_text()))
            except (OSError, ValueError, TypeError, KeyError, EdgefleetError) as exc:
                # One damaged record must not hide the others, nor stop the cloud (nor one
                # whose request this version refuses, say a krum run with too few clients).
                log.warning("federated run record %s is unreadable (%s); skipping it", path, exc)
                continue
            if not run.done:
                run.error = (
                    f"the cloud stopped while the run was {run.state}; its SuperLink went "
                    "with it: start a new run"
                )
                run.state, run.reason = "failed", "interrupted"
                run.finished_at = run.finished_at or path.stat().st_mtime
                self.save(run)
            yield run


def _jsonable(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _to_record(run: FlRun) -> dict[str, Any]:
    out = {f.name: getattr(run, f.name) for f in fields(run) if f.name != "request"}
    out["request"] = asdict(run.request)
    out["format"] = FORMAT
    return out


def _from_record(data: dict[str, Any]) -> FlRun:
    if data.get("format") != FORMAT:
        raise ValueError(f"record format {data.get('format')!r}, this cloud reads {FORMAT}")
    req = dict(data["request"])
    req["devices"] = tuple(req.get("devices", ()))
    names = {f.name for f in fields(FlRun)} - {"request"}
    return FlRun(request=FlRunRequest(**req), **{k: v for k, v in data.items() if k in names})
