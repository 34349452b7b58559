"""Assign a model version to devices: resolve targets, record them, send ``cmd/assign-model``."""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence

import msgspec

from edgefleet.cloud.auth.grants import DownloadGrants
from edgefleet.cloud.errors import NoTargets, NotFound
from edgefleet.cloud.node import CloudNode
from edgefleet.cloud.publisher import CommandPublisher
from edgefleet.cloud.registry import ModelRegistry
from edgefleet.cloud.store.base import (
    Assignment,
    AssignmentTarget,
    DeviceState,
    ModelVersion,
    SelectorKind,
    TelemetryStore,
)
from edgefleet.protocol import topics
from edgefleet.protocol.compat import Fit, check_fit
from edgefleet.protocol.errors import Incompatible, ManifestInvalid
from edgefleet.protocol.manifest import BundleManifest
from edgefleet.protocol.messages import AssignModel, DeviceProfile

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
        *,
        grants: DownloadGrants | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.publisher = publisher
        self.node = node
        self.download_base_url = download_base_url.rstrip("/")
        # Each device's command carries a URL with a grant for that bundle and device only;
        # None (tests of the assigner alone): the bare URL, which needs an API token.
        self.grants = grants

    def resolve(
        self, kind: SelectorKind, values: Sequence[str], fleet: str | None
    ) -> list[DeviceState]:
        """The devices a selector names now."""
        if kind in ("device", "list"):
            known = {d.device_id: d for d in self.store.devices(fleet=fleet)}
            unknown = sorted(set(values) - set(known))
            if unknown:
                raise NoTargets(f"unknown device(s): {', '.join(unknown)} (none has connected)")
            return [known[d] for d in sorted(set(values))]
        if kind == "tag":
            devices = self.store.devices(fleet=fleet, tag=values[0])
        else:
            devices = self.store.devices(fleet=fleet)
        if not devices:
            what = f"tag {values[0]!r}" if kind == "tag" else "the fleet"
            raise NoTargets(f"{what} selects no device")
        return devices

    def fit(
        self, manifest: BundleManifest, device: DeviceState, *, allow_task_change: bool = False
    ) -> Fit:
        """Whether ``manifest`` fits ``device`` as far as the cloud knows the device.

        The rule is the agent's own (:func:`edgefleet.protocol.compat.check_fit`), applied to
        the profile of the device's birth. Its task comes from that birth when the birth
        describes the model the device serves now, else from the registry's manifest of that
        model; the input spec is checked for devices that report a profile (their agents
        apply the same rule), not for older ones whose pipeline the cloud does not know.
        """
        serving = f"{device.model}@{device.model_version}" if device.model else None
        raw = dict(device.profile) if device.profile is not None else None
        unchecked: list[str] = []
        if raw is None:
            profile = DeviceProfile()
        else:
            described = raw.pop("model", None)
            try:
                profile = msgspec.convert(raw, DeviceProfile)
            except msgspec.ValidationError:
                profile, raw = DeviceProfile(), None
            if raw is not None and described != serving:
                profile = msgspec.structs.replace(profile, task=None, labels=None)
                raw["task"] = None
        if serving is not None and (raw is None or raw.get("task") is None):
            current = self._manifest_or_none(device.model, device.model_version)
            if current is not None:
                profile = msgspec.structs.replace(
                    profile, task=current.postprocessing.kind, labels=list(current.labels)
                )
            else:
                unchecked.append("task")
        fit = check_fit(
            manifest, profile, allow_task_change=allow_task_change, input_spec=raw is not None
        )
        return Fit(fit.mismatches, (*fit.unchecked, *unchecked))

    def _manifest_or_none(self, name: str | None, version: str | None) -> BundleManifest | None:
        if name is None or version is None:
            return None
        try:
            return _manifest(self.store.model(name, version))
        except (NotFound, ManifestInvalid):
            return None

    def assign(
        self,
        ref: str,
        kind: SelectorKind,
        values: Sequence[str] = (),
        *,
        fleet: str | None = None,
        rollout_id: str | None = None,
        wave: int = 0,
        allow_task_change: bool = False,
        rollback: bool = False,
    ) -> Assignment:
        """Assign ``name@version`` to the selected devices and send each its command.

        Refused with :class:`Incompatible` before anything is stored or sent when the bundle
        does not fit one of the devices; what the cloud could not check about a device (an
        older agent reports less) is noted in that target's ``detail``.
        """
        name, version = parse_ref(ref)
        model, _path = self.registry.archive(name, version)
        manifest = _manifest(model)
        devices = self.resolve(kind, values, fleet)
        fits = {
            d.device_id: self.fit(manifest, d, allow_task_change=allow_task_change) for d in devices
        }
        bad = {d: f for d, f in fits.items() if not f.ok}
        if bad:
            lines = "; ".join(f"{d}: {f.describe()}" for d, f in sorted(bad.items()))
            raise Incompatible(
                f"{model.ref} does not fit {len(bad)} of {len(devices)} target device(s), so "
                f"nothing was sent: {lines}"
            )
        notes = {d: _unchecked_note(f) for d, f in fits.items()}
        targets = [(d.device_id, d.fleet) for d in devices]
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
                targets=tuple(
                    AssignmentTarget(d, "pending", None, notes[d], now) for d, _f in targets
                ),
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
                url=self._device_url(model.sha256, device),
                sha256=model.sha256,
                size=model.size,
                runtime=model.runtime if model.runtime in ("litert", "onnx") else None,  # type: ignore[arg-type]
                rollout_id=rollout_id,
                allow_task_change=allow_task_change,
                # Agents refuse an older version than they serve unless the signed command
                # says the operator means it (downgrade protection).
                rollback=rollback,
            )
            self.publisher.publish(topics.command(device_fleet, device, COMMAND), cmd)
            self.store.set_target_state(
                assignment_id, device, "sent", detail=notes[device], at=time.time()
            )
        del created
        return self.store.assignment(assignment_id)

    def _device_url(self, sha256: str, device_id: str) -> str:
        if self.grants is None:
            return f"{self.download_base_url}/v1/blobs/{sha256}"
        return self.grants.url(self.download_base_url, sha256, device_id)


def _manifest(model: ModelVersion) -> BundleManifest:
    """The registered version's manifest as the struct the compatibility rule reads."""
    try:
        return msgspec.convert(model.manifest, BundleManifest)
    except msgspec.ValidationError as exc:
        raise ManifestInvalid(f"the registry's manifest of {model.ref} is invalid: {exc}") from None


def _unchecked_note(fit: Fit) -> str | None:
    if not fit.unchecked:
        return None
    return (
        f"not checked by the cloud: {', '.join(fit.unchecked)} (the device did not report "
        "them); the device checks them itself"
    )
