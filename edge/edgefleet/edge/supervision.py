"""Supervision of the agent's tasks: a task that dies takes the agent down, loudly.

A device whose inference, uplink, transport or health task died would keep its retained
"online" status while doing nothing; failing the whole agent instead lets the will announce
it and a service manager (systemd ``Restart=on-failure``) restart it. A task that ends
without an error (the source ran out of data, a not-provisioned device's renewal) is not a
failure.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger("edgefleet.edge.agent")


async def supervise(
    tasks: Iterable[asyncio.Task[None]], stop: asyncio.Event, crash: Callable[[], None]
) -> tuple[str, BaseException] | None:
    """Wait for ``stop``, or for a task to fail: then call ``crash`` and return (name, error)."""
    stopped = asyncio.ensure_future(stop.wait())
    watched: set[asyncio.Future[Any]] = set(tasks)
    try:
        while True:
            done, _ = await asyncio.wait(watched | {stopped}, return_when=asyncio.FIRST_COMPLETED)
            if stopped in done:
                return None
            for task in done:
                watched.discard(task)
                if task.cancelled():
                    continue
                exc = task.exception()
                if exc is not None:
                    name = task.get_name() if isinstance(task, asyncio.Task) else "agent"
                    log.error(
                        "the %s task failed: stopping without a clean disconnect",
                        name,
                        exc_info=exc,
                    )
                    crash()
                    return name, exc
    finally:
        stopped.cancel()
