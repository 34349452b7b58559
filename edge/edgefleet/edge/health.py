"""Health telemetry: CPU, memory, temperature, Pi throttling, inference latency, outbox state."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

THERMAL = Path("/sys/class/thermal")
# Newer Raspberry Pi kernels expose the firmware's throttling mask without vcgencmd.
THROTTLED_SYSFS = Path("/sys/devices/platform/soc/soc:firmware/get_throttled")


class LatencyWindow:
    """The last ``size`` inference latencies (ms) in a ring, for p50/p95/p99."""

    def __init__(self, size: int = 2048) -> None:
        self._buf = np.zeros(size, dtype=np.float64)
        self._n = 0
        self.total = 0

    def add(self, values: Iterable[float]) -> None:
        """Record latencies."""
        buf, size = self._buf, len(self._buf)
        for v in values:
            buf[self._n % size] = v
            self._n += 1
        self.total = self._n

    def percentiles(self) -> tuple[float, float, float] | None:
        """(p50, p95, p99) of the window, or None before the first inference."""
        if self._n == 0:
            return None
        data = self._buf[: min(self._n, len(self._buf))]
        p = np.percentile(data, [50, 95, 99])
        return float(p[0]), float(p[1]), float(p[2])


def temperature_c(root: Path = THERMAL) -> float | None:
    """The SoC temperature from the first thermal zone, where the kernel exposes one."""
    try:
        zones = sorted(root.glob("thermal_zone*/temp"))
        return int(zones[0].read_text().strip()) / 1000.0 if zones else None
    except (OSError, ValueError):
        return None


def throttled(sysfs: Path = THROTTLED_SYSFS) -> int | None:
    """The Raspberry Pi throttling bit mask (under-voltage, capped, throttled), if available."""
    try:
        return int(sysfs.read_text().strip(), 16)
    except (OSError, ValueError):
        pass
    exe = shutil.which("vcgencmd")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "get_throttled"], capture_output=True, text=True, timeout=2, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"throttled=(0x[0-9a-fA-F]+)", out.stdout)
    return int(m.group(1), 16) if m else None


@dataclass(frozen=True, slots=True)
class SystemSample:
    """One reading of the host's state."""

    cpu_percent: float | None
    mem_rss_mb: float | None
    mem_available_mb: float | None
    temperature_c: float | None
    throttled: int | None


class SystemProbe:
    """Reads host metrics through psutil and sysfs; cheap enough to call every few seconds."""

    def __init__(self) -> None:
        try:
            import psutil

            self._psutil = psutil
            self._proc = psutil.Process(os.getpid())
            self._proc.cpu_percent(None)  # primes the counter: the first call always says 0
        except ImportError:  # pragma: no cover - psutil is part of the edge extra
            self._psutil = None
        self.started = time.monotonic()

    def sample(self) -> SystemSample:
        """The current CPU, memory, temperature and throttling state."""
        cpu = rss = avail = None
        if self._psutil is not None:
            cpu = float(self._proc.cpu_percent(None))
            rss = self._proc.memory_info().rss / 2**20
            avail = self._psutil.virtual_memory().available / 2**20
        return SystemSample(cpu, rss, avail, temperature_c(), throttled())

    def uptime_s(self) -> float:
        """Seconds since the agent started."""
        return time.monotonic() - self.started
