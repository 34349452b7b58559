"""Sensor sources behind one seam, chosen by ``source.kind`` in the configuration."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path

from edgefleet.edge.config import SourceConfig
from edgefleet.edge.sources.base import (
    Chunk,
    EventSink,
    Source,
    attach_reporter,
    close_source,
)

SourceFactory = Callable[[SourceConfig, Executor | None, Callable[[], float]], Source]


def _simulated(cfg: SourceConfig, _executor: Executor | None, clock: Callable[[], float]) -> Source:
    from edgefleet.edge.sources.simulated import SimulatedSource

    return SimulatedSource(
        cfg.signal,
        cfg.seed,
        rate_hz=cfg.rate_hz,
        chunk=cfg.chunk,
        variation=cfg.variation,
        realtime=cfg.realtime,
        limit_samples=cfg.limit_samples,
        clock=clock,
    )


def _serial(cfg: SourceConfig, executor: Executor | None, clock: Callable[[], float]) -> Source:
    from edgefleet.edge.sources.serial import SerialSource

    return SerialSource(
        cfg.port,
        baud=cfg.baud,
        mode=cfg.mode,
        fmt=cfg.format,
        channels=cfg.channels,
        columns=cfg.columns,
        time_key=cfg.time_key or None,
        time_scale=cfg.time_scale,
        rate_hz=cfg.rate_hz,
        chunk=cfg.chunk,
        read_timeout=cfg.read_timeout_s,
        open_timeout=cfg.open_timeout_s,
        reconnect_min=cfg.reconnect_min_s,
        reconnect_max=cfg.reconnect_max_s,
        report_interval=cfg.report_interval_s,
        clock=clock,
    )


def _replay(cfg: SourceConfig, _executor: Executor | None, clock: Callable[[], float]) -> Source:
    from edgefleet.edge.sources.replay import ReplaySource

    return ReplaySource(
        Path(cfg.path),
        fmt=cfg.format,
        channels=cfg.channels,
        rate_hz=cfg.rate_hz,
        chunk=cfg.chunk,
        realtime=cfg.realtime,
        loop=cfg.loop,
        clock=clock,
    )


SOURCES: dict[str, SourceFactory] = {
    "simulated": _simulated,
    "serial": _serial,
    "replay": _replay,
}


def make_source(
    cfg: SourceConfig, executor: Executor | None = None, clock: Callable[[], float] = time.time
) -> Source:
    """Build the source ``cfg.kind`` names."""
    return SOURCES[cfg.kind](cfg, executor, clock)


__all__ = [
    "SOURCES",
    "Chunk",
    "EventSink",
    "Source",
    "attach_reporter",
    "close_source",
    "make_source",
]
