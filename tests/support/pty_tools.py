"""Helpers for tests over real pseudo-terminals: waiting on conditions, collecting readings."""

from __future__ import annotations

import asyncio
import os
import tty
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from edgefleet.firmware_bridge.errors import LinkTimeout
from edgefleet.firmware_bridge.link import Reading, SerialLink


async def wait_until(cond: Callable[[], bool], within: float = 10.0, what: str = "") -> None:
    """Poll ``cond`` until it holds; fail the test with ``what`` after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what or cond}")
        await asyncio.sleep(0.01)


async def collect(
    link: SerialLink, want: Callable[[list[Reading]], bool], within: float = 10.0
) -> list[Reading]:
    """Read from ``link`` until ``want(readings)`` holds; fail after ``within`` seconds."""
    got: list[Reading] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not want(got):
        left = deadline - loop.time()
        if left <= 0:
            raise AssertionError(f"timed out after {within} s with {len(got)} readings")
        try:
            got.append(await link.receive(left))
        except LinkTimeout:
            continue
    return got


@contextmanager
def raw_pty() -> Iterator[tuple[int, str]]:
    """A raw pty pair: yields (master fd, slave path); the caller plays the MCU on the master."""
    master, slave = os.openpty()
    tty.setraw(slave)
    try:
        yield master, os.ttyname(slave)
    finally:
        os.close(master)
        os.close(slave)
