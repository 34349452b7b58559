"""Settings of the web dashboard: live-feed rate, stream lifetime and alert thresholds."""

from __future__ import annotations

from dataclasses import dataclass, field

from edgefleet.protocol.errors import ConfigError


@dataclass(frozen=True, slots=True)
class AlertRules:
    """Thresholds that turn fleet state into alerts on the overview."""

    temperature_c: float = 75.0
    outbox_depth: int = 1000
    # Health older than this on an online device means the agent is stuck or its clock is off.
    stale_health_s: float = 300.0
    # At most this many alerts are listed; the counts per kind are always complete.
    max_listed: int = 50

    def __post_init__(self) -> None:
        if self.outbox_depth < 0 or self.stale_health_s <= 0 or self.max_listed < 1:
            raise ConfigError(
                "alert rules need outbox_depth >= 0, stale_health_s > 0 and max_listed >= 1"
            )


@dataclass(frozen=True, slots=True)
class DashboardSettings:
    """How often the live feed reads the store and how the stream behaves."""

    # The feed reads fleet state at most this often, whatever the number of viewers or the
    # message rate: the ingest path never does per-message work for the dashboard.
    interval_s: float = 1.0
    # The feed's thread stops this long after the last viewer leaves.
    idle_stop_s: float = 10.0
    # Diffs kept for viewers that fell behind; older ones get a full snapshot again.
    history: int = 32
    # A stream ends after this long; EventSource reconnects by itself. Bounds how long a
    # server shutdown can wait on an open stream even if nobody calls Dashboard.close().
    max_stream_s: float = 300.0
    # Comment lines keep proxies from closing an idle stream and reveal gone clients.
    heartbeat_s: float = 10.0
    # Points per series on a device page (newest kept).
    max_points: int = 600
    alerts: AlertRules = field(default_factory=AlertRules)

    def __post_init__(self) -> None:
        if not 0.05 <= self.interval_s <= 60:
            raise ConfigError(f"dashboard interval_s {self.interval_s} is outside 0.05..60 s")
        if self.history < 1 or self.max_points < 10:
            raise ConfigError("dashboard history must be >= 1 and max_points >= 10")
        if self.max_stream_s <= 0 or self.heartbeat_s <= 0 or self.idle_stop_s < 0:
            raise ConfigError("dashboard stream times must be positive")
