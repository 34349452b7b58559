"""A federated run's value types: the request the API takes and the record it shows.

They import nothing else of the run's modules, so the service, the schedule and the journal
all build on them without importing one another.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from edgefleet.cloud.fl.errors import FlSettingsError
from edgefleet.cloud.fl.settings import STRATEGIES, DpSettings, RunSettings

RunState = Literal["preparing", "running", "registering", "assigning", "finished", "failed"]


@dataclass(frozen=True, slots=True)
class FlRunRequest:
    """One federated run as the API takes it (docs/http-api.md)."""

    model: str
    rounds: int = 3
    min_clients: int = 2
    devices: tuple[str, ...] = ()
    strategy: str = "fedavg"
    epochs: int = 1
    lr: float = 0.05
    max_samples: int = 1000
    round_timeout_s: float = 120.0
    quorum_timeout_s: float = 60.0
    deadline_s: float | None = None
    register: bool = True
    assign: bool = False
    margin: float | None = None
    seed: int = 0
    from_version: str | None = None
    dp: str = "none"
    dp_noise: float = 0.1
    dp_clip: float = 5.0

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise FlSettingsError(f"strategy must be one of {', '.join(STRATEGIES)}")
        if self.rounds < 1 or self.min_clients < 1:
            raise FlSettingsError("rounds and min_clients must be at least 1")
        if self.assign and not self.register:
            raise FlSettingsError("assign needs register: only a registered bundle can be sent")
        # Bad run settings (DP included) are refused now, not when the run's thread starts.
        self.run_settings(Path("."))

    def dp_settings(self) -> DpSettings:
        """The differential privacy the run asked for (``dp``, ``dp_noise``, ``dp_clip``)."""
        return DpSettings(kind=self.dp, noise_multiplier=self.dp_noise, clipping_norm=self.dp_clip)  # type: ignore[arg-type]

    def run_settings(self, workdir: Path, parent: str | None = None) -> RunSettings:
        """The settings the ServerApp runs with: every knob of this request, DP included."""
        return RunSettings(
            model=self.model,
            rounds=self.rounds,
            min_clients=self.min_clients,
            workdir=str(workdir),
            strategy=self.strategy,  # type: ignore[arg-type]
            dp=self.dp_settings(),
            epochs=self.epochs,
            lr=self.lr,
            max_samples=self.max_samples,
            seed=self.seed,
            round_timeout_s=self.round_timeout_s,
            quorum_timeout_s=self.quorum_timeout_s,
            parent=parent,
        )

    def device_deadline(self) -> float:
        """How long a device keeps its SuperNode: the whole run's worst case plus a minute."""
        if self.deadline_s is not None:
            return self.deadline_s
        return self.quorum_timeout_s + self.rounds * (self.round_timeout_s + 30.0) + 60.0


@dataclass(slots=True)
class FlRun:
    """A run's state as ``GET /v1/fl/runs/{id}`` shows it."""

    id: str
    request: FlRunRequest
    devices: list[str]
    state: RunState = "preparing"
    created_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    superlink: str = ""
    rounds: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    reason: str | None = None
    registered: str | None = None
    rejected: bool | None = None
    metric: dict[str, float | None] = field(default_factory=dict)
    assignment: str | None = None
    start: dict[str, Any] = field(default_factory=dict)
    # Each device's newest answer to start-training, as last seen by the run (kept on disk).
    acks: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        """Finished or failed."""
        return self.state in ("finished", "failed")

    def to_json(self, acks: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
        """The run as JSON (``acks``: each device's newest answer, over the recorded ones)."""
        r = self.request
        return {
            "id": self.id,
            "model": r.model,
            "state": self.state,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
            "superlink": self.superlink,
            "devices": self.devices,
            "acks": {**self.acks, **(acks or {})},
            "settings": {
                "rounds": r.rounds,
                "min_clients": r.min_clients,
                "strategy": r.strategy,
                "epochs": r.epochs,
                "lr": r.lr,
                "round_timeout_s": r.round_timeout_s,
                "quorum_timeout_s": r.quorum_timeout_s,
                "device_deadline_s": r.device_deadline(),
                "dp": r.dp_settings().lineage() or {"kind": "none"},
            },
            "start": self.start,
            "rounds": self.rounds,
            "aggregated": sum(x.get("status") == "aggregated" for x in self.rounds),
            "registered": self.registered,
            "rejected": self.rejected,
            "metric": self.metric,
            "assignment": self.assignment,
            "error": self.error,
            "reason": self.reason,
        }
