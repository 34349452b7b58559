"""Build and parse the MQTT topics of protocol ``edgefleet/v1``.

The tree puts everything one device may touch under ``edgefleet/v1/{fleet}/{device}/``, so a
few broker ACL lines confine each device to its subtree (docs/protocol.md, "Per-device ACL").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from edgefleet.protocol.errors import TopicError

ROOT = "edgefleet"
VERSION = "v1"
PREFIX = f"{ROOT}/{VERSION}"
BROADCAST = "_all"

# Ids become topic levels, file names and SQL keys: keep them to a conservative alphabet.
# MQTT forbids '+' and '#' in topic names [MQTT-4.7.1-1] and '/' would add a level; a leading
# '_' is reserved for edgefleet's own levels such as `_all`; '$' starts broker-internal topics.
MAX_ID_LENGTH = 64
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")


class Kind(StrEnum):
    """The kind of a device topic: what lies after ``{fleet}/{device}/``."""

    STATUS = "status"
    TELEMETRY = "telemetry"
    EVENT = "event"
    CMD = "cmd"
    CMD_ACK = "cmd-ack"


def validate_id(value: str, what: str = "id") -> str:
    """Return ``value`` if it is a valid fleet, device, stream, event or command id."""
    if not isinstance(value, str) or not value:
        raise TopicError(f"{what} must be a non-empty string, got {value!r}")
    if len(value) > MAX_ID_LENGTH:
        raise TopicError(
            f"{what} {value[:20]!r}... is {len(value)} characters; the limit is {MAX_ID_LENGTH}"
        )
    if not _ID.match(value):
        raise TopicError(
            f"{what} {value!r} may hold only letters, digits, '.', '_' and '-' and must start "
            "with a letter or digit (no '/', '+', '#', '$', spaces or a leading '_')"
        )
    return value


@dataclass(frozen=True, slots=True)
class Topic:
    """One parsed edgefleet topic; ``name`` is the stream, event kind or command name."""

    fleet: str
    device: str
    kind: Kind
    name: str | None = None

    def __post_init__(self) -> None:
        validate_id(self.fleet, "fleet id")
        if self.device != BROADCAST:
            validate_id(self.device, "device id")
        elif self.kind is not Kind.CMD:
            raise TopicError(f"only commands may be broadcast to {BROADCAST!r}, not {self.kind}")
        if self.kind is Kind.STATUS:
            if self.name is not None:
                raise TopicError("a status topic has no name level")
        elif self.name is None:
            raise TopicError(f"a {self.kind} topic needs a name")
        else:
            validate_id(self.name, f"{self.kind} name")

    @property
    def is_broadcast(self) -> bool:
        """True for ``edgefleet/v1/{fleet}/_all/cmd/{name}``."""
        return self.device == BROADCAST

    def __str__(self) -> str:
        base = f"{PREFIX}/{self.fleet}/{self.device}"
        if self.kind is Kind.STATUS:
            return f"{base}/status"
        if self.kind is Kind.CMD_ACK:
            return f"{base}/cmd/{self.name}/ack"
        return f"{base}/{self.kind.value}/{self.name}"


def status(fleet: str, device: str) -> str:
    """Topic of a device's retained birth / LWT status."""
    return str(Topic(fleet, device, Kind.STATUS))


def telemetry(fleet: str, device: str, stream: str) -> str:
    """Topic of one telemetry stream of a device (QoS 1)."""
    return str(Topic(fleet, device, Kind.TELEMETRY, stream))


def event(fleet: str, device: str, kind: str) -> str:
    """Topic of a device event of the given kind."""
    return str(Topic(fleet, device, Kind.EVENT, kind))


def command(fleet: str, device: str, name: str) -> str:
    """Topic of a command to one device, or to all of a fleet when ``device`` is ``_all``."""
    return str(Topic(fleet, device, Kind.CMD, name))


def command_ack(fleet: str, device: str, name: str) -> str:
    """Topic a device acks a command on."""
    return str(Topic(fleet, device, Kind.CMD_ACK, name))


def parse(topic: str) -> Topic:
    """Parse an edgefleet topic, raising :class:`TopicError` for anything else."""
    if not isinstance(topic, str):
        raise TopicError(f"a topic is a string, got {type(topic).__name__}")
    levels = topic.split("/")
    if len(levels) < 4 or levels[0] != ROOT:
        raise TopicError(f"{topic!r} is not an edgefleet topic (expected {PREFIX}/...)")
    if levels[1] != VERSION:
        raise TopicError(f"{topic!r} uses protocol {levels[1]!r}; this build speaks {VERSION}")
    fleet, device, rest = levels[2], levels[3], levels[4:]
    match rest:
        case ["status"]:
            return Topic(fleet, device, Kind.STATUS)
        case ["telemetry", name]:
            return Topic(fleet, device, Kind.TELEMETRY, name)
        case ["event", name]:
            return Topic(fleet, device, Kind.EVENT, name)
        case ["cmd", name]:
            return Topic(fleet, device, Kind.CMD, name)
        case ["cmd", name, "ack"]:
            return Topic(fleet, device, Kind.CMD_ACK, name)
    raise TopicError(f"{topic!r} has no known shape under {PREFIX}/{{fleet}}/{{device}}/")


# Subscription filters. `+` matches one level [MQTT-4.7.1-3], `#` the rest [MQTT-4.7.1-2].
def fleet_filter(fleet: str) -> str:
    """Filter for every topic of a fleet."""
    return f"{PREFIX}/{validate_id(fleet, 'fleet id')}/#"


def uplink_filters(fleet: str | None = None) -> list[str]:
    """Filters for everything devices send: status, telemetry, events and command acks."""
    f = "+" if fleet is None else validate_id(fleet, "fleet id")
    return [
        f"{PREFIX}/{f}/+/status",
        f"{PREFIX}/{f}/+/telemetry/+",
        f"{PREFIX}/{f}/+/event/+",
        f"{PREFIX}/{f}/+/cmd/+/ack",
    ]


def device_command_filters(fleet: str, device: str) -> list[str]:
    """Filters a device subscribes to: its own commands and the fleet's broadcasts."""
    return [
        f"{PREFIX}/{validate_id(fleet, 'fleet id')}/{validate_id(device, 'device id')}/cmd/+",
        f"{PREFIX}/{fleet}/{BROADCAST}/cmd/+",
    ]


def shared(group: str, topic_filter: str) -> str:
    """An MQTT v5 shared subscription (`$share/{group}/{filter}`, MQTT 5.0 section 4.8.2)."""
    return f"$share/{validate_id(group, 'share group')}/{topic_filter}"


# Mosquitto ACL lines that confine each device to its own device id (mosquitto.conf(5),
# "pattern"). `%u` is the username the broker authenticated: a password-file entry, or a client
# certificate's CN with `use_identity_as_username`; edgefleet makes it the device id. Not `%c`:
# a client chooses its own client id, so a pattern on it confines nothing. Mosquitto substitutes
# only `%u` and `%c`, so these lines cannot bind a device to its fleet (it may publish under its
# own id in another fleet's tree); device_acl() writes per-device lines that do.
DEVICE_ACL_PATTERNS = (
    f"pattern write {PREFIX}/+/%u/status",
    f"pattern write {PREFIX}/+/%u/telemetry/+",
    f"pattern write {PREFIX}/+/%u/event/+",
    f"pattern write {PREFIX}/+/%u/cmd/+/ack",
    f"pattern read {PREFIX}/+/%u/cmd/+",
    f"pattern read {PREFIX}/+/{BROADCAST}/cmd/+",
)


def device_acl(fleet: str, device: str) -> list[str]:
    """Mosquitto ACL lines for one device (username = device id) that also pin its fleet.

    Use them instead of :data:`DEVICE_ACL_PATTERNS`, which apply to every user: one block per
    device, generated from the fleet's device list.
    """
    base = f"{PREFIX}/{validate_id(fleet, 'fleet id')}"
    own = f"{base}/{validate_id(device, 'device id')}"
    return [
        f"user {device}",
        f"topic write {own}/status",
        f"topic write {own}/telemetry/+",
        f"topic write {own}/event/+",
        f"topic write {own}/cmd/+/ack",
        f"topic read {own}/cmd/+",
        f"topic read {base}/{BROADCAST}/cmd/+",
    ]
