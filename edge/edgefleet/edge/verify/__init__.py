"""Bundle verification behind one seam, chosen by ``model.verify`` in the configuration."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from edgefleet.edge.verify.base import Checked, Verifier

VerifierFactory = Callable[[Sequence[str | Path]], Verifier]


def _process(keys: Sequence[str | Path]) -> Verifier:
    from edgefleet.edge.verify.inprocess import InProcessVerifier

    return InProcessVerifier(keys)


def _subprocess(keys: Sequence[str | Path]) -> Verifier:
    from edgefleet.edge.verify.isolated import SubprocessVerifier

    return SubprocessVerifier(keys)


# "auto" is resolved by the entry point: the device launchers pick "subprocess", an Agent built
# directly (tests, the simulator's hundreds of agents in one process) "process".
VERIFIERS: dict[str, VerifierFactory] = {
    "auto": _process,
    "process": _process,
    "subprocess": _subprocess,
}


def make_verifier(mode: str, keys: Sequence[str | Path]) -> Verifier:
    """The verifier ``model.verify`` names, for the trusted key files ``keys``."""
    return VERIFIERS[mode](keys)


__all__ = ["VERIFIERS", "Checked", "Verifier", "make_verifier"]
