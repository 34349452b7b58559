"""Parity of a converted model with its Keras source on the held-out set."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgefleet.models.base import Array, Task
from edgefleet.models.errors import ParityFailed

# The bars of the issue: converted classifiers agree on top-1, anomaly scores rank alike.
TOP1_AGREEMENT_BAR = 0.99
SPEARMAN_BAR = 0.98


@dataclass(frozen=True, slots=True)
class Parity:
    """How closely a converted model follows Keras: the task's measure, its bar, the worst gap."""

    measure: str
    value: float
    bar: float
    max_abs_diff: float
    samples: int

    @property
    def passed(self) -> bool:
        """Whether the measure meets its bar."""
        return self.value >= self.bar

    def metrics(self) -> dict[str, float]:
        """The manifest ``metrics`` entries for this check."""
        return {
            f"parity_{self.measure}": self.value,
            f"parity_{self.measure}_bar": self.bar,
            "parity_max_abs_diff": self.max_abs_diff,
            "parity_samples": float(self.samples),
        }

    def require(self, what: str) -> Parity:
        """Return self, or raise :class:`ParityFailed` naming ``what`` missed the bar."""
        if not self.passed:
            raise ParityFailed(
                f"{what}: {self.measure} {self.value:.4f} is below the bar {self.bar} on "
                f"{self.samples} held-out samples; train longer or change the conversion"
            )
        return self


def top1_agreement(reference: Array, outputs: Array) -> float:
    """Share of samples whose argmax class is the same in both."""
    return float((reference.argmax(axis=-1) == outputs.argmax(axis=-1)).mean())


def spearman(reference: Array, outputs: Array) -> float:
    """Spearman rank correlation of two score vectors."""
    from scipy.stats import spearmanr

    return float(spearmanr(reference.reshape(-1), outputs.reshape(-1)).statistic)


def check_parity(task: Task, reference: Array, outputs: Array) -> Parity:
    """Compare converted ``outputs`` with Keras ``reference`` by the bar of ``task``."""
    if reference.shape != outputs.shape:
        raise ParityFailed(f"output shape {outputs.shape} differs from Keras {reference.shape}")
    diff = float(np.max(np.abs(reference - outputs))) if reference.size else 0.0
    if task == "classify":
        return Parity(
            "top1_agreement",
            top1_agreement(reference, outputs),
            TOP1_AGREEMENT_BAR,
            diff,
            len(reference),
        )
    return Parity("spearman", spearman(reference, outputs), SPEARMAN_BAR, diff, len(reference))
