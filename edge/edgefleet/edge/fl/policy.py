"""When a device may train: CPU, temperature and time-window limits; yielding to inference."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from edgefleet.edge.fl.errors import FlConfigError, TrainingRefused

THERMAL_ZONE = Path("/sys/class/thermal/thermal_zone0/temp")


def _minutes(text: str) -> int:
    hh, sep, mm = text.strip().partition(":")
    if not sep or not hh.isdigit() or not mm.isdigit() or int(hh) > 23 or int(mm) > 59:
        raise FlConfigError(f"{text!r} is not a HH:MM time of day")
    return int(hh) * 60 + int(mm)


@dataclass(frozen=True, slots=True)
class TrainingPolicy:
    """Limits under which local training may run; 0 / "" switch a limit off.

    ``window`` is ``HH:MM-HH:MM`` in local time and may wrap midnight (``22:00-06:00``).
    ``yield_to_inference`` runs training at the lowest CPU priority and pauses between
    batches while the CPU is above ``max_cpu_percent``.
    """

    max_cpu_percent: float = 80.0
    max_temperature_c: float = 75.0
    window: str = ""
    yield_to_inference: bool = True
    max_pause_s: float = 5.0

    def __post_init__(self) -> None:
        if not 0 <= self.max_cpu_percent <= 100:
            raise FlConfigError("max_cpu_percent must be between 0 (off) and 100")
        if self.max_temperature_c < 0 or self.max_pause_s < 0:
            raise FlConfigError("max_temperature_c and max_pause_s must not be negative")
        if self.window:
            start, sep, end = self.window.partition("-")
            if not sep:
                raise FlConfigError(f"window {self.window!r} is not HH:MM-HH:MM")
            _minutes(start), _minutes(end)

    def in_window(self, now: datetime) -> bool:
        """Whether ``now`` lies in the training window (always, without one)."""
        if not self.window:
            return True
        start, _, end = self.window.partition("-")
        lo, hi, t = _minutes(start), _minutes(end), now.hour * 60 + now.minute
        return lo <= t < hi if lo <= hi else t >= lo or t < hi

    def to_node_config(self) -> dict[str, str | float | bool]:
        """The policy as SuperNode ``--node-config`` entries (the ClientApp reads them back)."""
        return {
            "policy-max-cpu": self.max_cpu_percent,
            "policy-max-temp": self.max_temperature_c,
            "policy-window": self.window,
            "policy-yield": self.yield_to_inference,
            "policy-max-pause": self.max_pause_s,
        }

    @classmethod
    def from_node_config(cls, cfg: Mapping[str, Any]) -> TrainingPolicy:
        """Read the entries written by :meth:`to_node_config` (defaults where absent)."""
        d = cls()
        try:
            return cls(
                max_cpu_percent=float(cfg.get("policy-max-cpu", d.max_cpu_percent)),
                max_temperature_c=float(cfg.get("policy-max-temp", d.max_temperature_c)),
                window=str(cfg.get("policy-window", d.window)),
                yield_to_inference=bool(cfg.get("policy-yield", d.yield_to_inference)),
                max_pause_s=float(cfg.get("policy-max-pause", d.max_pause_s)),
            )
        except (TypeError, ValueError) as exc:
            raise FlConfigError(f"bad training policy in the node config: {exc}") from None


class DeviceProbe(Protocol):
    """What the policy reads from the device."""

    def cpu_percent(self) -> float:
        """System-wide CPU use in percent, averaged since the last call."""
        ...

    def temperature_c(self) -> float | None:
        """SoC temperature, or None where the device has no sensor."""
        ...


class SystemProbe:
    """:class:`DeviceProbe` over psutil and the Linux thermal zone."""

    def __init__(self) -> None:
        import psutil  # type: ignore[import-untyped,unused-ignore]

        self._psutil = psutil
        psutil.cpu_percent(None)  # the first call only primes the counter

    def cpu_percent(self) -> float:
        """System-wide CPU use since the last call."""
        return float(self._psutil.cpu_percent(None))

    def temperature_c(self) -> float | None:
        """``thermal_zone0`` in degrees Celsius, if the device exposes it."""
        try:
            return int(THERMAL_ZONE.read_text().strip()) / 1000.0
        except (OSError, ValueError):
            return None


def refusal(policy: TrainingPolicy, probe: DeviceProbe, now: datetime) -> str | None:
    """Why training may not start now, or None when it may."""
    if not policy.in_window(now):
        return f"outside the training window {policy.window}"
    temp = probe.temperature_c()
    if policy.max_temperature_c and temp is not None and temp > policy.max_temperature_c:
        return f"temperature {temp:.1f} C is above {policy.max_temperature_c:.1f} C"
    cpu = probe.cpu_percent()
    if policy.max_cpu_percent and cpu > policy.max_cpu_percent:
        return f"CPU load {cpu:.0f}% is above {policy.max_cpu_percent:.0f}%"
    return None


def require_allowed(policy: TrainingPolicy, probe: DeviceProbe, now: datetime) -> None:
    """Raise :class:`TrainingRefused` unless the policy allows training now."""
    reason = refusal(policy, probe, now)
    if reason is not None:
        raise TrainingRefused(f"training refused: {reason}")


def lower_priority() -> None:
    """Run this process at idle CPU priority so inference always wins the CPU."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(19)


def yielder(
    policy: TrainingPolicy, probe: DeviceProbe, sleep: Callable[[float], None] = time.sleep
) -> Callable[[], None]:
    """A between-batches hook: pause while the CPU is busy, up to ``max_pause_s`` per batch."""

    def between_batches() -> None:
        if not policy.yield_to_inference or not policy.max_cpu_percent:
            return
        waited = 0.0
        while waited < policy.max_pause_s and probe.cpu_percent() > policy.max_cpu_percent:
            sleep(0.05)
            waited += 0.05

    return between_batches
