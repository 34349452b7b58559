"""The dashboard's routes: the page at ``/``, its static files, the live stream and JSON views."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import FileResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from edgefleet.cloud.api import CloudServices
from edgefleet.cloud.auth import EdgefleetAuthError, Role, authenticator, require
from edgefleet.cloud.dashboard.base import NoRounds, RoundSource
from edgefleet.cloud.dashboard.feed import LiveFeed
from edgefleet.cloud.dashboard.series import SeriesCursor, device_series
from edgefleet.cloud.dashboard.settings import DashboardSettings
from edgefleet.cloud.dashboard.snapshot import Snapshot, take_snapshot

_json = msgspec.json.Encoder()


def static_dir() -> Path:
    """The folder of the page, its scripts and the vendored uPlot (shipped in the wheel)."""
    return Path(str(resources.files("edgefleet.cloud.dashboard") / "static"))


def _event(name: str, data: Any, event_id: int | None = None) -> bytes:
    head = f"event: {name}\n" + (f"id: {event_id}\n" if event_id is not None else "")
    return head.encode() + b"data: " + _json.encode(data) + b"\n\n"


@dataclass(slots=True)
class Dashboard:
    """A mounted dashboard: its feed and settings. Call :meth:`close` before server shutdown."""

    feed: LiveFeed
    settings: DashboardSettings
    services: CloudServices
    rounds: RoundSource

    def close(self) -> None:
        """End open streams (so the server's graceful shutdown does not wait on them)."""
        self.feed.close()

    def snapshot(self) -> Snapshot:
        """The fleet state now, rounds included (the feed and the JSON view both take this)."""
        s = self.services
        return take_snapshot(s.store, self.settings.alerts, s.fleet, self.rounds)

    async def stream(self, request: Request, device: str | None) -> AsyncIterator[bytes]:
        """Server-sent events: one ``snapshot``, then ``diff`` (and ``series``) events."""
        s, feed = self.settings, self.feed
        tick = min(0.25, s.interval_s / 2)
        started = last_write = time.monotonic()
        cursor = SeriesCursor()
        next_series = 0.0
        with feed.subscription():
            # The client reconnects after `retry` ms when a stream ends (max_stream_s).
            yield b"retry: 1000\n\n"
            version, snap = feed.current()
            while snap is None and not feed.closed:
                await asyncio.sleep(0.02)
                version, snap = feed.current()
            if snap is None:
                return
            yield _event("snapshot", snap.full(version), version)
            while not feed.closed and time.monotonic() - started < s.max_stream_s:
                if await request.is_disconnected():
                    return
                now = time.monotonic()
                if feed.version != version:
                    diffs = feed.since(version)
                    if diffs is None:
                        version, snap = feed.current()
                        if snap is not None:
                            yield _event("snapshot", snap.full(version), version)
                    else:
                        for d in diffs:
                            yield _event("diff", d, d["v"])
                            version = d["v"]
                    last_write = now
                if device is not None and now >= next_series:
                    next_series = now + s.interval_s
                    new = await run_in_threadpool(
                        device_series, self.services.store, device,
                        limit=s.max_points, cursor=cursor,
                    )  # fmt: skip
                    if new["health"]["t"] or new["inference"]["t"]:
                        yield _event("series", new)
                        last_write = now
                if now - last_write >= s.heartbeat_s:
                    yield b": keep-alive\n\n"
                    last_write = now
                await asyncio.sleep(tick)


def mount_dashboard(
    app: FastAPI,
    services: CloudServices,
    *,
    settings: DashboardSettings | None = None,
    rounds: RoundSource | None = None,
) -> Dashboard:
    """Add the dashboard to an app made by :func:`~edgefleet.cloud.api.create_app`, at ``/``."""
    settings = settings or DashboardSettings()
    rules = settings.alerts
    source = rounds or NoRounds()

    def take() -> Snapshot:
        # Through the Dashboard (made below): a round source set on it later is read here too.
        return dash.snapshot()

    feed = LiveFeed(
        take,
        interval_s=settings.interval_s,
        idle_stop_s=settings.idle_stop_s,
        history=settings.history,
    )
    dash = Dashboard(feed, settings, services, source)
    router = APIRouter(
        prefix="/dashboard/api", tags=["dashboard"], dependencies=[Depends(require(Role.viewer))]
    )

    @router.get("/stream")
    async def stream(request: Request, device: str | None = None) -> StreamingResponse:
        """Live fleet state as server-sent events (``snapshot``, ``diff``, ``series``)."""
        return StreamingResponse(
            dash.stream(request, device),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @router.get("/snapshot")
    def snapshot() -> dict[str, Any]:
        """The fleet state the stream starts from, for clients without EventSource."""
        return dash.snapshot().full(feed.version)

    @router.get("/devices/{device_id}/series")
    def series(
        device_id: str, limit: Annotated[int, Query(ge=10, le=10_000)] = settings.max_points
    ) -> dict[str, Any]:
        """Health and inference series of one device, oldest first."""
        services.store.device(device_id)  # NotFound (404) for an unknown device
        return device_series(services.store, device_id, limit=limit)

    @router.get("/rounds")
    def fl_rounds(limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> list[dict[str, Any]]:
        """Federated rounds with their metrics, newest first (empty until FL runs)."""
        return dash.rounds.rounds(limit)

    @router.get("/settings")
    def dashboard_settings() -> dict[str, Any]:
        """The live interval and alert thresholds the page shows."""
        return {
            "interval_s": settings.interval_s,
            "fleet": services.fleet,
            "alerts": {"temperature_c": rules.temperature_c, "outbox_depth": rules.outbox_depth},
        }

    app.include_router(router)
    index = static_dir() / "index.html"

    @app.get("/", include_in_schema=False)
    def page(request: Request) -> Response:
        # Without a live session the page would only show errors: go to the login page.
        try:
            authenticator(request).principal(request)
        except EdgefleetAuthError:
            return RedirectResponse("login")
        return FileResponse(index, media_type="text/html", headers={"Cache-Control": "no-cache"})

    @app.get("/dashboard", include_in_schema=False)
    def to_page() -> RedirectResponse:
        return RedirectResponse("/")

    app.mount("/dashboard/static", StaticFiles(directory=static_dir()), name="dashboard-static")
    return dash
