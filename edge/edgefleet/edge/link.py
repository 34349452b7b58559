"""The agent's link to the broker: transport callbacks, and its birth, will and status."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from edgefleet.edge.commands import CommandHandler
from edgefleet.edge.config import MqttConfig
from edgefleet.edge.installer import Installer
from edgefleet.edge.sequencer import Sequencer
from edgefleet.edge.transport.base import LinkHandler, Transport
from edgefleet.edge.transport.mqtt import MqttTransport, Will
from edgefleet.edge.uplink import Uplink
from edgefleet.protocol import topics
from edgefleet.protocol.codec import Codec
from edgefleet.protocol.commandauth import seal_record
from edgefleet.protocol.messages import Status


class Link(LinkHandler):
    """What the transport calls back (on the event loop), and the retained status it announces.

    The status carries the serving model and the device profile, read from ``installer`` at
    the moment it is sent: a birth after a swap names the new model.
    """

    def __init__(
        self,
        uplink: Callable[[], Uplink],
        commands: CommandHandler,
        installer: Installer,
        *,
        device_id: str,
        fleet: str,
        version: str,
        sequencer: Sequencer,
        codec: Codec,
        clock: Callable[[], float],
    ) -> None:
        self._uplink = uplink
        self.commands = commands
        self.installer = installer
        self.device_id = device_id
        self.fleet = fleet
        self.version = version
        self.sequencer = sequencer
        self.codec = codec
        self.clock = clock

    # ------------------------------------------------------------------ link events

    def on_connected(self) -> None:
        """Replay the outbox on every new session."""
        up = self._uplink()
        up.record_key = self.commands.record_key
        up.command_refusals = self.commands.guard.refused
        up.on_connected()

    def on_disconnected(self) -> None:
        """Nothing to undo: unacknowledged rows stay in the outbox."""

    def on_message(self, topic: str, payload: bytes) -> None:
        """A command arrived."""
        self.commands.handle(topic, payload)

    def on_published(self) -> None:
        """A PUBACK freed a publish slot."""
        self._uplink().wake()

    # ------------------------------------------------------------------ status

    def status(
        self, state: Literal["online", "offline"], reason: Literal["start", "shutdown", "lwt"]
    ) -> tuple[str, bytes]:
        """The retained ``status`` message (topic, payload) for ``state`` because of ``reason``."""
        model, version = self.installer.model_ref
        msg = Status(
            device_id=self.device_id,
            boot_id=self.sequencer.boot_id,
            seq=0,
            sent_at=self.clock(),
            state=state,
            reason=reason,
            agent_version=self.version,
            model=model,
            model_version=version,
            profile=self.installer.profile(),
        )
        topic, payload = topics.status(self.fleet, self.device_id), self.codec.encode(msg)
        key = self.commands.record_key
        if key is not None:
            payload = seal_record(key, topic, payload, self.device_id)
        return topic, payload

    def birth(self) -> tuple[str, bytes]:
        """The retained "online" status sent on every connection."""
        return self.status("online", "start")

    def will(self) -> Will:
        """The retained "offline" status the broker sends if this agent dies."""
        topic, payload = self.status("offline", "lwt")
        return Will(topic, payload)


def mqtt_transport(cfg: MqttConfig, link: Link) -> Transport:
    """The MQTT transport of ``link``'s device: its command subscriptions, birth and will."""
    return MqttTransport(
        cfg,
        link.device_id,
        link,
        subscriptions=topics.device_command_filters(link.fleet, link.device_id),
        will=link.will,
        birth=link.birth,
    )
