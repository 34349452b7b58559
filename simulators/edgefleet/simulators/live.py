"""The terminal view of a running simulation and its summary table (rich)."""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

from rich.console import Console, Group
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
    # Every event, for the plain progress lines (``events`` keeps only what the panel shows).
    log: list[str] = field(default_factory=list)
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
        line = f"[{at:6.1f}s] {text}"
        self.events.append(line)
        self.log.append(line)

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

    def line(self) -> str:
        """One plain progress line (for output that is not a terminal)."""
        s = list(self.snaps.values())
        elapsed = time.monotonic() - self.started if self.started else 0.0
        return (
            f"[{min(elapsed, self.duration):6.1f}s] {self.phase}: "
            f"{sum(x.online for x in s)}/{self.devices} online, {self.rate:.1f} msg/s, "
            f"published {self.published}, outbox {sum(x.depth for x in s)}, "
            f"stored {self.stored}, broker {'up' if self.broker_up else 'DOWN'}"
        )

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


def make_console() -> Console:
    """A console for the CLI; a file or pipe gets whole lines and tables 120 columns wide."""
    console = Console()
    if not console.is_terminal:
        # A log is read with grep: a line wrapped at 80 columns hides what it says.
        console.soft_wrap = True
        if "COLUMNS" not in os.environ:
            console.width = 120
    return console


class Progress(Protocol):
    """What :func:`status` yields: update the text of the step in progress."""

    def update(self, text: str, /) -> None:
        """Show ``text`` as the step's state."""
        ...


class _Lines:
    """Prints each new state as a line: a spinner means nothing in a log file."""

    def __init__(self, console: Console, text: str) -> None:
        self.console, self.last = console, ""
        self.update(text)

    def update(self, text: str) -> None:
        """Print ``text`` unless it is the state printed last."""
        if text != self.last:
            self.last = text
            self.console.print(text, highlight=False)


@contextmanager
def status(console: Console, text: str) -> Iterator[Progress]:
    """A spinner on a terminal; elsewhere one line per change of state."""
    if console.is_terminal:
        with console.status(text) as spinner:
            yield spinner
    else:
        yield _Lines(console, text)


def summary_table(checks: Checks, limit: int = 30) -> Group:
    """Per-device accounting (the worst first) and the invariants."""
    columns = (
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
    )
    rows = sorted(checks.devices, key=lambda d: (d.ok, d.device_id))
    cells = [
        [
            d.device_id,
            str(d.boots),
            str(d.produced),
            str(d.stored),
            str(d.dropped),
            str(d.lost),
            str(d.duplicates),
            str(d.crashes),
            f"{d.wills_seen}/{d.wills_expected}",
            str(d.replays),
        ]
        for d in rows[:limit]
    ]
    # Values are never cut short (a device id is what the reader greps the report for); on a
    # narrow console the headers fold instead.
    table = Table(title="per device (first rows: the worst)", padding=(0, 1))
    for i, col in enumerate(columns):
        table.add_column(
            col,
            justify="left" if col == "device" else "right",
            no_wrap=False,
            overflow="fold",
            min_width=max((len(r[i]) for r in cells), default=1),
        )
    for d, row in zip(rows, cells, strict=False):
        if not d.ok:
            row[0] = f"[red]{row[0]}[/]"
        table.add_row(*row)
    if len(rows) > limit:
        table.caption = f"... and {len(rows) - limit} more devices (all in the report)"
    inv = Table(title="invariants")
    inv.add_column("check", overflow="fold")
    inv.add_column("ok", no_wrap=True)
    inv.add_column("detail", overflow="fold")
    for check in checks.invariants:
        inv.add_row(check.name, "[green]yes[/]" if check.ok else "[red]NO[/]", check.detail)
    return Group(table, inv)
