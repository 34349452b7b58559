"""SecAgg+ parameters of a run, written beside its settings for the ServerApp to read."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgefleet.cloud.fl.errors import FlSettingsError
from edgefleet.cloud.fl.settings import RunSettings


@dataclass(frozen=True, slots=True)
class SecAggSettings:
    """SecAgg+ parameters; written next to the run's settings as ``secagg.json``.

    ``num_shares`` 0 shares every client's secret with every sampled client;
    ``reconstruction_threshold`` 0 is a majority of ``min_clients`` (at least 2): fewer
    colluding clients than that learn nothing, and up to ``clients - threshold`` may drop out
    after the setup stage. ``max_weight`` 0 is the run's ``max_samples`` (a client's weight is
    its example count, which never exceeds it). Parameters are clipped to
    ``±clipping_range`` before quantisation.
    """

    num_shares: int = 0
    reconstruction_threshold: int = 0
    max_weight: float = 0.0
    clipping_range: float = 8.0

    def __post_init__(self) -> None:
        if self.num_shares and self.num_shares < 3:
            raise FlSettingsError("--secagg-shares must be 0 (every client) or at least 3")
        if self.reconstruction_threshold == 1 or self.reconstruction_threshold < 0:
            raise FlSettingsError("the SecAgg+ reconstruction threshold must be 0 or >= 2")
        if self.num_shares and self.reconstruction_threshold >= self.num_shares:
            raise FlSettingsError("the SecAgg+ reconstruction threshold must be below the shares")
        if self.max_weight < 0 or self.clipping_range <= 0:
            raise FlSettingsError("SecAgg+ needs max_weight >= 0 and a positive clipping range")

    def threshold(self, settings: RunSettings) -> int:
        """The reconstruction threshold for ``settings``."""
        return self.reconstruction_threshold or max(2, settings.min_clients // 2 + 1)

    def quorum(self, settings: RunSettings) -> int:
        """Clients a round needs: the run's quorum, and never fewer than the threshold."""
        return max(settings.min_clients, self.threshold(settings))

    def workflow_args(self, settings: RunSettings) -> dict[str, Any]:
        """Arguments of Flower's ``SecAggPlusWorkflow``."""
        return {
            # A float share count is a fraction of the clients sampled in the round.
            "num_shares": self.num_shares or 1.0,
            "reconstruction_threshold": self.threshold(settings),
            "max_weight": self.max_weight or float(settings.max_samples),
            "clipping_range": self.clipping_range,
            # Every stage waits at most the round deadline (four stages per round).
            "timeout": settings.round_timeout_s,
        }

    @staticmethod
    def path(settings: RunSettings) -> Path:
        """Where the ServerApp reads these settings."""
        return settings.root / "secagg.json"

    def write(self, settings: RunSettings) -> Path:
        """Write these settings into the run's directory."""
        settings.root.mkdir(parents=True, exist_ok=True)
        path = self.path(settings)
        path.write_text(json.dumps(asdict(self)))
        return path

    @classmethod
    def read(cls, settings: RunSettings) -> SecAggSettings:
        """Read the settings of the run (the defaults when the file is missing)."""
        path = cls.path(settings)
        if not path.is_file():
            return cls()
        try:
            return cls(**json.loads(path.read_text()))
        except (ValueError, TypeError) as exc:
            raise FlSettingsError(f"cannot read SecAgg+ settings {path}: {exc}") from None
