"""Parse line-mode samples (CSV or JSON lines), as most existing sensor sketches print them."""

from __future__ import annotations

import json
from collections.abc import Sequence

from edgefleet.edge.errors import SourceError


def parse_line(
    line: str, fmt: str, channels: Sequence[str]
) -> tuple[float | None, list[float]] | None:
    """One sample ``(t or None, values)`` from a line; None for blank, comment or header lines.

    CSV lines hold one value per channel, optionally preceded by a timestamp column when they
    have one more field than channels. JSON lines are objects with a key per channel and an
    optional ``t``.
    """
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    if fmt == "json":
        try:
            obj = json.loads(line)
            values = [float(obj[c]) for c in channels]
        except (ValueError, KeyError, TypeError) as exc:
            raise SourceError(f"bad JSON sample line {line[:80]!r}: {exc}") from None
        t = obj.get("t")
        return (float(t) if isinstance(t, int | float) else None), values
    fields = line.split(",")
    try:
        nums = [float(f) for f in fields]
    except ValueError:
        if any(f.strip() in channels for f in fields):
            return None  # a header line
        raise SourceError(f"bad CSV sample line {line[:80]!r}: not numbers") from None
    if len(nums) == len(channels):
        return None, nums
    if len(nums) == len(channels) + 1:
        return nums[0], nums[1:]
    raise SourceError(
        f"CSV sample line has {len(nums)} fields; expected {len(channels)} channels "
        f"({', '.join(channels)}), optionally after a timestamp"
    )


def csv_header(line: str) -> list[str] | None:
    """The channel names of a CSV header line (a leading ``t`` column dropped), else None."""
    fields = [f.strip() for f in line.strip().split(",")]
    try:
        [float(f) for f in fields]
    except ValueError:
        return [f for f in fields if f not in ("t", "time", "timestamp")]
    return None
