"""Roles and the principal a request acts as."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from edgefleet.protocol.errors import ConfigError

_RANK = {"viewer": 0, "operator": 1, "admin": 2}


class Role(StrEnum):
    """What a credential may do; each includes those below it (admin ⊇ operator ⊇ viewer)."""

    viewer = "viewer"
    operator = "operator"
    admin = "admin"

    def allows(self, needed: Role) -> bool:
        """True when this role includes ``needed``."""
        return _RANK[self.value] >= _RANK[needed.value]

    @classmethod
    def parse(cls, value: str) -> Role:
        """A role from its name, with an error naming the choices."""
        try:
            return cls(value)
        except ValueError:
            raise ConfigError(f"role {value!r} is not one of viewer, operator, admin") from None


PrincipalKind = Literal["token", "session", "device"]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts as: an API token, a dashboard session, or a device."""

    name: str
    role: Role
    kind: PrincipalKind
    device_id: str | None = None
    token_id: str | None = None
