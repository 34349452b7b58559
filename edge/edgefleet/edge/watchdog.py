"""systemd's notify protocol (``sd_notify``) over ``$NOTIFY_SOCKET``, with the stdlib only.

Under the unit ``edgefleet agent install`` writes (``Type=notify``, ``WatchdogSec=``) the agent
says ``READY=1`` once it serves, then ``WATCHDOG=1`` from its event loop at half the
watchdog interval, so a loop that hangs (a blocking call, a deadlock) stops the pings and
systemd kills and restarts the agent. ``STATUS=`` lines show in ``systemctl status``. Outside
systemd (no ``$NOTIFY_SOCKET``) every call here does nothing.

The datagram format is systemd's (``man sd_notify``): ``KEY=VALUE`` lines, sent to a Unix
datagram socket whose path is ``$NOTIFY_SOCKET`` (a leading ``@`` is the abstract namespace).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from typing import Protocol

log = logging.getLogger("edgefleet.edge.agent")

# How often STATUS= is refreshed when no watchdog asks for pings (seconds).
STATUS_EVERY_S = 10.0


class Serving(Protocol):
    """What the watchdog reads of the agent for its ``STATUS=`` line."""

    @property
    def model_ref(self) -> tuple[str | None, str | None]:
        """(name, version) of the model serving now."""
        ...

    @property
    def device_id(self) -> str:
        """The device's id."""
        ...


class Notifier:
    """One process's connection to the service manager; inert without ``$NOTIFY_SOCKET``."""

    def __init__(self, address: str | None, watchdog_usec: int | None) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec
        self._sock: socket.socket | None = None

    @classmethod
    def from_environment(cls) -> Notifier:
        """Read (and remove) ``NOTIFY_SOCKET``/``WATCHDOG_USEC`` from this process's environment.

        They are removed so that the agent's children (the bundle verifier, a Flower
        SuperNode) do not inherit them and speak for the agent.
        """
        address = os.environ.pop("NOTIFY_SOCKET", None) or None
        usec = os.environ.pop("WATCHDOG_USEC", None)
        pid = os.environ.pop("WATCHDOG_PID", None)
        watchdog: int | None = None
        if usec and (pid is None or pid == str(os.getpid())):
            with contextlib.suppress(ValueError):
                watchdog = int(usec) if int(usec) > 0 else None
        return cls(address, watchdog)

    @property
    def enabled(self) -> bool:
        """True under a service manager that listens."""
        return self.address is not None

    def notify(self, *lines: str) -> bool:
        """Send ``lines`` as one datagram; False when there is no one to tell or it failed."""
        if self.address is None:
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(lines).encode(), target)
        except OSError as exc:
            # The manager going away must never take the agent down with it.
            log.debug("sd_notify to %s failed: %s", self.address, exc)
            return False
        return True

    def close(self) -> None:
        """Close the socket."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def status_line(agent: Serving) -> str:
    """What ``systemctl status`` shows for the agent now."""
    name, version = agent.model_ref
    model = f"serving {name}@{version}" if name else "no model (health only)"
    return f"STATUS={agent.device_id}: {model}"


async def serve(agent: Serving, notifier: Notifier | None = None) -> None:
    """Say READY=1, then ping WATCHDOG=1 (and refresh STATUS=) from this loop until cancelled.

    Returns at once outside systemd. On cancellation (the agent shutting down) it says
    ``STOPPING=1``.
    """
    notifier = notifier or Notifier.from_environment()
    if not notifier.enabled:
        return
    every = notifier.watchdog_usec / 2e6 if notifier.watchdog_usec else STATUS_EVERY_S
    notifier.notify("READY=1", status_line(agent))
    try:
        while True:
            await asyncio.sleep(every)
            lines = [status_line(agent)]
            if notifier.watchdog_usec:
                lines.insert(0, "WATCHDOG=1")
            notifier.notify(*lines)
    finally:
        notifier.notify("STOPPING=1", f"STATUS={agent.device_id}: stopping")
        notifier.close()
