"""A JSON-lines file where the ClientApp notes each round it served, read by the agent.

Flower starts a fresh ClientApp process per message and the SuperNode never says when a run
ends, so the ClientApp appends one line per train message (round, total rounds, outcome,
losses) to the file the agent names in ``--node-config status=...``. The agent reads it to
know when the run is over for this device and what to put in its ack.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Outcome = Literal["trained", "refused", "failed"]


@dataclass(frozen=True, slots=True)
class RoundNote:
    """One train message this device served."""

    round: int
    rounds: int
    outcome: Outcome
    reason: str = ""
    examples: int = 0
    loss_before: float | None = None
    loss_after: float | None = None

    def to_json(self) -> str:
        """One line of the file."""
        return json.dumps(
            {
                "round": self.round,
                "rounds": self.rounds,
                "outcome": self.outcome,
                "reason": self.reason,
                "examples": self.examples,
                "loss_before": self.loss_before,
                "loss_after": self.loss_after,
            }
        )

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RoundNote:
        """Read a line written by :meth:`to_json`."""
        return cls(
            round=int(data["round"]),
            rounds=int(data.get("rounds", 0)),
            outcome=data["outcome"],
            reason=str(data.get("reason", "")),
            examples=int(data.get("examples", 0)),
            loss_before=data.get("loss_before"),
            loss_after=data.get("loss_after"),
        )


def append_note(path: Path, note: RoundNote) -> None:
    """Append one line (a single ``write`` of a short line with O_APPEND: never interleaved)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (note.to_json() + "\n").encode())
    finally:
        os.close(fd)


def read_notes(path: Path) -> list[RoundNote]:
    """Every complete line so far (a torn or foreign line is skipped)."""
    try:
        text = path.read_text()
    except OSError:
        return []
    notes = []
    for line in text.splitlines():
        try:
            notes.append(RoundNote.from_json(json.loads(line)))
        except (ValueError, KeyError, TypeError):
            continue
    return notes
