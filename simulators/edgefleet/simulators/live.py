"""The terminal view of a running simulation and its summary table (rich)."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from edgefleet.simulators.invariants import Checks
from edgefleet.simulators.worker import Snapshot


@dataclass(slots=True)
class LiveState:
    """What the coordinator knows while the fleet runs."""

    title: str
    duration: float
    devices: int
    urls: dict[str, str] = field(default_factory=dict)
    phase: str = "starting"
    started: float = 0.0
    snaps: dict[int, Snapshot] = field(default_factory=dict)
    events: deque[str] = field(default_factory=lambda: deque(maxlen=8))
    stored: int = 0
    broker_up: bool = True
    _rate: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=6))

    def add_snapshot(self, worker: int, snap: Snapshot) -> None:
        """Record a worker's snapshot and update the message rate."""
        self.snaps[worker] = snap
        self._rate.append((time.monotonic(), self.published))

    def event(self, text: str) -> None:
        """Log a timeline event (shown newest last)."""
        at = time.monotonic() - self.started if self.started else 0.0
        self.events.append(f"[{at:6.1f}s] {text}")

    @property
    def published(self) -> int:
        """MQTT messages published by the whole fleet."""
        return sum(s.published for s in self.snaps.values())

    @property
    def rate(self) -> float:
        """Messages per second over the last few snapshots."""
        if len(self._rate) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self._rate[0], self._rate[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    def render(self) -> Panel:
        """The live panel."""
        s = list(self.snaps.values())
        elapsed = time.monotonic() - self.started if self.started else 0.0
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column()
        table.add_row(
            "phase", f"{self.phase}  {min(elapsed, self.duration):5.0f}/{self.duration:g}s"
        )
        table.add_row(
            "devices online",
            f"{sum(x.online for x in s)} / {self.devices} ({sum(x.running for x in s)} running)",
        )
        table.add_row("messages/s", f"{self.rate:8.1f}  (published {self.published})")
        table.add_row(
            "outbox depth",
            f"{sum(x.depth for x in s)} total, {max((x.depth_max for x in s), default=0)} max",
        )
        table.add_row("stored in the cloud", str(self.stored))
        table.add_row("broker", "[green]up[/]" if self.broker_up else "[red]DOWN[/]")
        table.add_row("memory", f"{sum(x.rss_mb for x in s):.0f} MB in {len(s)} processes")
        for name, url in self.urls.items():
            table.add_row(name, url)
        events = Text("\n".join(self.events) or "no events yet", style="dim")
        return Panel(Group(table, Text(""), events), title=self.title)


def summary_table(checks: Checks, limit: int = 30) -> Group:
    """Per-device accounting (the worst first) and the invariants."""
    table = Table(title="per device (first rows: the worst)")
    for col in (
        "device",
        "boots",
        "produced",
        "stored",
        "dropped",
        "lost",
        "dups",
        "crashes",
        "wills",
        "replays",
    ):
        table.add_column(col, justify="left" if col == "device" else "right")
    rows = sorted(checks.devices, key=lambda d: (d.ok, d.device_id))
    for d in rows[:limit]:
        table.add_row(
            d.device_id if d.ok else f"[red]{d.device_id}[/]",
            str(d.boots),
            str(d.produced),
            str(d.stored),
            str(d.dropped),
            str(d.lost),
            str(d.duplicates),
            str(d.crashes),
            f"{d.wills_seen}/{d.wills_expected}",
            str(d.replays),
        )
    if len(rows) > limit:
        table.caption = f"... and {len(rows) - limit} more devices (all in the report)"
    inv = Table(title="invariants")
    inv.add_column("check")
    inv.add_column("ok")
    inv.add_column("detail")
    for i in checks.invariants:
        inv.add_row(i.name, "[green]yes[/]" if i.ok else "[red]NO[/]", i.detail)
    return Group(table, inv)
