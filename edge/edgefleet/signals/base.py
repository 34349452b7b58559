"""The Signal seam: a seeded, stateful source of multichannel samples, and drift."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

Samples = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Drift:
    """A change in a signal's distribution.

    ``shift`` adds ``magnitude`` (in units of the channel's typical amplitude) to every sample,
    ``scale`` multiplies the dynamic part by ``1 + magnitude``, ``mode`` adds a new component
    the model has never seen (a fault tone for vibration, a new motion pattern for activity).
    """

    kind: Literal["shift", "scale", "mode"]
    magnitude: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ("shift", "scale", "mode"):
            raise ValueError(f"drift kind must be shift, scale or mode, not {self.kind!r}")
        if not np.isfinite(self.magnitude):
            raise ValueError("drift magnitude must be finite")


class Signal(Protocol):
    """A seeded multichannel signal; reading advances its clock by ``n / rate_hz`` seconds."""

    channels: tuple[str, ...]
    rate_hz: float

    def read(self, n: int) -> Samples:
        """The next ``n`` samples as a float32 array of shape (n, len(channels))."""
        ...

    def set_drift(self, drift: Drift | None) -> None:
        """Apply (or with None remove) a drift from the next sample on."""
        ...


_REGISTRY: dict[str, Callable[..., Signal]] = {}


def register(name: str, factory: Callable[..., Signal]) -> None:
    """Make a signal class or factory available to :func:`make_signal` by name."""
    _REGISTRY[name] = factory


def make_signal(kind: str, seed: int, **params: Any) -> Signal:
    """Build the registered signal ``kind`` with ``seed`` and keyword parameters."""
    try:
        factory = _REGISTRY[kind]
    except KeyError:
        raise ValueError(f"unknown signal {kind!r}; choose one of {sorted(_REGISTRY)}") from None
    return factory(seed=seed, **params)


def apply_drift(
    x: Samples, drift: Drift | None, baseline: npt.NDArray[np.float32], scale: float
) -> Samples:
    """Apply shift or scale drift around ``baseline``; ``mode`` is handled by each signal."""
    if drift is None or drift.kind == "mode":
        return x
    if drift.kind == "shift":
        return (x + np.float32(drift.magnitude * scale)).astype(np.float32)
    return (baseline + (x - baseline) * np.float32(1.0 + drift.magnitude)).astype(np.float32)
