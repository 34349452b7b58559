"""Where a federated run starts: the float weights of a registered version, or fresh weights.

Federated learning fine-tunes the model the fleet runs. Its bundle's inference model is int8,
so the start is the bundle's ``weights.npz`` (role ``train``, docs/models.md): the float
weights it was quantized from. A version without that file (built before bundles carried
one) makes the run start from the zoo's freshly built, seeded weights, and the run says so.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefleet.cloud.fl.errors import FlSettingsError
from edgefleet.cloud.fl.runs.handoff import REJECTED, Registry, VersionLister, current_model
from edgefleet.cloud.store.base import ModelVersion
from edgefleet.models.trainable.reference import Array
from edgefleet.models.trainable.weights import WEIGHTS_FILE, bundle_weights
from edgefleet.protocol.bundle import read_manifest, unpack_bundle

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, eq=False)
class StartPoint:
    """A run's initial weights and the version they come from (the lineage ``parent``).

    ``weights`` is None for a fresh start: no registered version, or one without a weights
    file; ``note`` says which in words for the run's record.
    """

    model: str
    parent: str | None
    weights: list[Array] | None
    note: str

    @property
    def source(self) -> str:
        """``parent`` (the version's float weights) or ``fresh`` (freshly built, seeded)."""
        return "parent" if self.weights is not None else "fresh"

    def to_json(self) -> dict[str, Any]:
        """As the run's record shows it."""
        return {"from": self.parent, "weights": self.source, "note": self.note}


def _version_of(model: str, wanted: str) -> str:
    """``1.0.0`` from ``1.0.0`` or ``MODEL@1.0.0`` (a different model's ref is refused)."""
    name, sep, version = wanted.rpartition("@")
    if sep and name != model:
        raise FlSettingsError(
            f"from_version {wanted!r} names model {name!r}, the run trains {model!r}",
            reason="unknown-version",
        )
    if not version:
        raise FlSettingsError("from_version is empty", reason="unknown-version")
    return version


def choose_version(
    versions: list[ModelVersion], model: str, wanted: str | None = None
) -> ModelVersion | None:
    """The version a run starts from: ``wanted``, else the newest one not rejected.

    An explicit version that is not registered raises :class:`FlSettingsError` (reason
    ``unknown-version``); an explicit rejected version is allowed (the caller asked for it).
    """
    if wanted is None:
        return current_model(versions)
    version = _version_of(model, wanted)
    for v in versions:
        if v.version == version:
            return v
    known = ", ".join(v.version for v in versions) or "none"
    raise FlSettingsError(
        f"{model}@{version} is not registered (registered versions: {known})",
        reason="unknown-version",
    )


def start_point(
    model: str, registry: Registry, versions: VersionLister, wanted: str | None = None
) -> StartPoint:
    """Read the initial weights of a run of ``model`` from the registry (see module doc)."""
    chosen = choose_version(versions.models(model), model, wanted)
    if chosen is None:
        return StartPoint(model, None, None, f"no registered version of {model}: fresh weights")
    _, archive = registry.archive(chosen.name, chosen.version)
    with tempfile.TemporaryDirectory(prefix="edgefleet-fl-start-") as tmp:
        directory = unpack_bundle(archive, Path(tmp) / "b")
        weights = bundle_weights(directory, read_manifest(directory))
    if weights is None:
        note = (
            f"{chosen.ref} carries no {WEIGHTS_FILE} (built before bundles carried their "
            "float weights): started from fresh seeded weights, not from it"
        )
        log.warning("federated run of %s: %s", model, note)
        return StartPoint(model, chosen.ref, None, note)
    rejected = " (a rejected version, asked for explicitly)" if chosen.metrics.get(REJECTED) else ""
    return StartPoint(model, chosen.ref, weights, f"fine-tunes {chosen.ref}{rejected}")
