"""Seams the dashboard reads from that other parts fill in (federated rounds)."""

from __future__ import annotations

from typing import Any, Protocol


class RoundSource(Protocol):
    """Federated-learning rounds with their metrics, newest first (edgefleet.cloud.fl)."""

    def rounds(self, limit: int) -> list[dict[str, Any]]:
        """Each round as JSON: at least ``run_id``, ``round``, ``started_at``, ``metrics``."""
        ...


class NoRounds:
    """The round source before federated learning is configured: always empty."""

    def rounds(self, limit: int) -> list[dict[str, Any]]:
        """No rounds."""
        return []
