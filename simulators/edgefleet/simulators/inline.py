"""An executor that runs each call at once on the event loop's thread (the outboxes' "one writer").

The agent hands every outbox operation to its ``db_executor`` with ``loop.run_in_executor``.
On a device that is one thread. In a simulator process holding a thousand agents, a thread
hop per operation (submit, a lock, a wake-up through the loop's self-pipe, the GIL handed
back and forth) costs more than the operation itself once the outbox does not fsync
(``synchronous = "normal"``): a small SQLite transaction takes tens of microseconds. This
executor runs the call right away and returns an already-resolved asyncio future, which
``run_in_executor`` passes through as it is (``asyncio.wrap_future`` returns asyncio futures
unchanged), so the ``await`` does not even yield. Every outbox of the process is used from the
loop's thread only: still one writer each.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from typing import Any, TypeVar, cast

T = TypeVar("T")


class LoopExecutor(concurrent.futures.Executor):
    """Runs ``fn(*args)`` synchronously in :meth:`submit`; for short, non-blocking calls only."""

    def __init__(self) -> None:
        self.calls = 0

    def submit(
        self, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[T]:
        """Call ``fn`` now; the result (or exception) comes back as a resolved future."""
        self.calls += 1
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        fut: Any = loop.create_future() if loop is not None else concurrent.futures.Future()
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:  # handed to whoever awaits, as a thread pool would
            fut.set_exception(exc)
        else:
            fut.set_result(result)
        # An asyncio future on the loop's thread (run_in_executor returns it unchanged), or a
        # concurrent one when called from outside any loop.
        return cast("concurrent.futures.Future[T]", fut)
