"""Errors of the simulator: a bad scenario file, a fleet that fails to start, a broken invariant."""

from __future__ import annotations

from edgefleet.protocol.errors import ConfigError, EdgefleetError, InvariantViolation


class ScenarioError(ConfigError):
    """A scenario file is invalid (unknown event, bad time, unknown group, bad field)."""

    reason = "bad-scenario"


class SimulationError(EdgefleetError):
    """The simulated fleet could not run (a worker process died, the cloud did not start)."""

    reason = "simulation"


__all__ = ["InvariantViolation", "ScenarioError", "SimulationError"]
