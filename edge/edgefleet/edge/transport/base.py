"""The Transport seam: a reconnecting publish/subscribe link to the broker."""

from __future__ import annotations

from typing import Protocol


class LinkHandler(Protocol):
    """What the transport tells its owner; always called on the event loop thread."""

    def on_connected(self) -> None:
        """The session is up (after CONNACK and subscriptions are sent)."""
        ...

    def on_disconnected(self) -> None:
        """The session went down; it is being re-established."""
        ...

    def on_message(self, topic: str, payload: bytes) -> None:
        """A message arrived on a subscription."""
        ...

    def on_published(self) -> None:
        """A QoS 1 publish was acknowledged by the broker (flow control only: not durability)."""
        ...


class Transport(Protocol):
    """A broker connection the uplink publishes through."""

    @property
    def connected(self) -> bool:
        """True while a session is up."""
        ...

    @property
    def pending(self) -> int:
        """QoS 1 publishes sent but not yet acknowledged by the broker."""
        ...

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> bool:
        """Queue a publish on the current session; False when there is none."""
        ...

    async def run(self) -> None:
        """Connect, and reconnect with backoff, until closed or aborted."""
        ...

    async def close(self, final: tuple[str, bytes] | None = None, wait_s: float = 5.0) -> None:
        """Publish ``final`` (retained), wait for it, then disconnect cleanly."""
        ...

    def abort(self) -> None:
        """Drop the connection without DISCONNECT, so the broker publishes the will."""
        ...
