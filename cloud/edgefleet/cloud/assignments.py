"""Assign a model version to devices: resolve targets, record them, send ``cmd/assign-model``."""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence

from edgefleet.cloud.errors import NoTargets
from edgefleet.cloud.node import CloudNode
from edgefleet.cloud.publisher import CommandPublisher
from edgefleet.cloud.registry import ModelRegistry
from edgefleet.cloud.store.base import Assignment, AssignmentTarget, SelectorKind, TelemetryStore
from edgefleet.protocol import topics
from edgefleet.protocol.messages import AssignModel

COMMAND = "assign-model"


def parse_ref(ref: str) -> tuple[str, str]:
    """Split ``name@version``."""
    name, sep, version = ref.partition("@")
    if not sep or not name or not version:
        raise NoTargets(f"{ref!r} is not NAME@VERSION (for example kws@1.2.0)", reason="bad-ref")
    return name, version


class Assigner:
    """Creates assignments and publishes one :class:`AssignModel` per target device.

    An assignment keeps its selector and one state per target, so a staged rollout can later
    create one assignment per wave (``rollout_id``, ``wave``) and gate on the target states.
    """

    def __init__(
        self,
        store: TelemetryStore,
        registry: ModelRegistry,
        publisher: CommandPublisher,
        node: CloudNode,
        download_base_url: str,
    ) -> None:
        self.store = store
        self.registry = registry
        self.publisher = publisher
        self.node = node
        self.download_base_url = download_base_url.rstrip("/")

    def resolve(
        self, kind: SelectorKind, values: Sequence[str], fleet: str | None
    ) -> list[tuple[str, str]]:
        """``(device_id, fleet)`` of the devices a selector names now."""
        if kind in ("device", "list"):
            known = {d.device_id: d.fleet for d in self.store.devices(fleet=fleet)}
            unknown = sorted(set(values) - set(known))
            if unknown:
                raise NoTargets(f"unknown device(s): {', '.join(unknown)} (none has connected)")
            return [(d, known[d]) for d in sorted(set(values))]
        if kind == "tag":
            devices = self.store.devices(fleet=fleet, tag=values[0])
        else:
            devices = self.store.devices(fleet=fleet)
        if not devices:
            what = f"tag {values[0]!r}" if kind == "tag" else "the fleet"
            raise NoTargets(f"{what} selects no device")
        return [(d.device_id, d.fleet) for d in devices]

    def assign(
        self,
        ref: str,
        kind: SelectorKind,
        values: Sequence[str] = (),
        *,
        fleet: str | None = None,
        rollout_id: str | None = None,
        wave: int = 0,
    ) -> Assignment:
        """Assign ``name@version`` to the selected devices and send each its command."""
        name, version = parse_ref(ref)
        model, _path = self.registry.archive(name, version)
        targets = self.resolve(kind, values, fleet)
        now = time.time()
        assignment_id = f"a-{secrets.token_hex(8)}"
        url = f"{self.download_base_url}/v1/blobs/{model.sha256}"
        created = self.store.create_assignment(
            Assignment(
                id=assignment_id,
                fleet=fleet or "",
                model=name,
                version=version,
                sha256=model.sha256,
                size=model.size,
                url=url,
                selector_kind=kind,
                selector=tuple(values),
                created_at=now,
                rollout_id=rollout_id,
                wave=wave,
                targets=tuple(AssignmentTarget(d, "pending", None, None, now) for d, _f in targets),
            )
        )
        for device, device_fleet in targets:
            cmd = AssignModel(
                device_id=self.node.node_id,
                boot_id=self.node.boot_id,
                seq=self.node.next_seq(),
                sent_at=time.time(),
                command_id=assignment_id,
                model=name,
                version=version,
                url=url,
                sha256=model.sha256,
                size=model.size,
                runtime=model.runtime if model.runtime in ("litert", "onnx") else None,  # type: ignore[arg-type]
                rollout_id=rollout_id,
            )
            self.publisher.publish(topics.command(device_fleet, device, COMMAND), cmd)
            self.store.set_target_state(assignment_id, device, "sent", at=time.time())
        del created
        return self.store.assignment(assignment_id)
