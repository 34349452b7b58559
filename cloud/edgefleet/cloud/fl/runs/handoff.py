"""After the last round: Keras, int8 bundle, evaluation against the parent version, register."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import msgspec
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.cloud.fl.apps.outcome import RunOutcome
from edgefleet.cloud.fl.errors import FlRunError
from edgefleet.cloud.fl.settings import RunSettings
from edgefleet.cloud.store.base import ModelVersion
from edgefleet.models.base import Array, Dataset, ReferenceModel
from edgefleet.models.bundler import bundle_from_trained
from edgefleet.models.errors import UnsupportedVariant
from edgefleet.models.runner import load_runner
from edgefleet.models.trainable.spec import TrainableSpec
from edgefleet.models.training import from_weights
from edgefleet.protocol.bundle import (
    VerifiedBundle,
    pack_bundle,
    read_manifest,
    unpack_bundle,
    write_bundle,
)
from edgefleet.protocol.manifest import Lineage

# The metric a model is judged by, per task (higher is better for both).
PRIMARY_METRIC = {"classify": "accuracy", "anomaly": "roc_auc"}
REJECTED = "fl_rejected"


class Registry(Protocol):
    """What the hand-off needs from the model registry (``edgefleet.cloud.registry``)."""

    def push(self, data: bytes) -> ModelVersion:
        """Verify and store a bundle archive."""
        ...

    def archive(self, name: str, version: str) -> tuple[ModelVersion, Path]:
        """A registered version and its archive."""
        ...


class VersionLister(Protocol):
    """The store's listing of registered versions."""

    def models(self, name: str | None = None) -> list[ModelVersion]:
        """Registered versions, newest upload first."""
        ...


@dataclass(frozen=True, slots=True)
class HandOff:
    """What was registered: the version, its metric, the baseline's, and the verdict."""

    version: ModelVersion
    metric: str
    value: float
    baseline: float | None
    baseline_ref: str | None
    rejected: bool


def next_version(versions: list[ModelVersion]) -> str:
    """One patch above the highest ``MAJOR.MINOR.PATCH`` registered (1.0.0 for the first)."""
    best = (1, 0, -1)
    for v in versions:
        parts = v.version.split("+")[0].split("-")[0].split(".")
        if len(parts) == 3 and all(p.isdigit() for p in parts):
            best = max(best, (int(parts[0]), int(parts[1]), int(parts[2])))
    return f"{best[0]}.{best[1]}.{best[2] + 1}"


def current_model(versions: list[ModelVersion]) -> ModelVersion | None:
    """The newest registered version that was not rejected."""
    for v in versions:
        if not v.metrics.get(REJECTED):
            return v
    return None


def _parent(versions: list[ModelVersion], ref: str) -> ModelVersion:
    for v in versions:
        if v.ref == ref:
            return v
    raise FlRunError(f"the run's parent {ref} is no longer registered")


def evaluate_registered(
    registry: Registry, version: ModelVersion, spec: ReferenceModel, data: Dataset
) -> dict[str, float]:
    """Run a registered bundle's model on the holdout data; its task metrics."""
    _, archive = registry.archive(version.name, version.version)
    with tempfile.TemporaryDirectory(prefix="edgefleet-baseline-") as tmp:
        directory = unpack_bundle(archive, Path(tmp) / "b")
        manifest = read_manifest(directory)
        runner = load_runner(manifest.runtime, directory / manifest.model_file)
        outputs = np.concatenate(
            [runner.run(data.x_test[i : i + 256]) for i in range(0, len(data.x_test), 256)]
        )
    return spec.evaluate(outputs, data)


def _resign(
    bundle: VerifiedBundle, key: Ed25519PrivateKey, metrics: dict[str, float], note: str
) -> VerifiedBundle:
    m = bundle.manifest
    roles = {f.path: f.role for f in m.files}
    manifest = msgspec.structs.replace(
        m, metrics={**m.metrics, **metrics}, description=f"{note}{m.description}"
    )
    return write_bundle(bundle.path, manifest, key, roles)


def keras_weights(settings: RunSettings, weights: list[Array]) -> list[Array]:
    """The whole Keras model's weights for a run's final (exchanged) weights.

    A model with a frozen base exchanged only its head: the base comes back from the run's
    ``spec.json``, exactly as the run froze it (the parent's). All-dense models are as is.
    """
    try:
        spec = TrainableSpec.from_json(json.loads(settings.spec_path.read_text()))
    except (OSError, ValueError, UnsupportedVariant) as exc:
        raise FlRunError(
            f"cannot read the run's trainable spec {settings.spec_path}: {exc}"
        ) from None
    try:
        return spec.keras_weights(weights)
    except UnsupportedVariant as exc:
        raise FlRunError(f"the run's final weights do not fit its model: {exc}") from None


def run_lineage(outcome: RunOutcome, parent: str | None) -> Lineage:
    """The lineage a run's bundle carries: parent, rounds, participants, strategy, DP."""
    s = outcome.settings
    return Lineage(
        parent=parent,
        trained_by="federated",
        fl_rounds=len(outcome.aggregated),
        fl_participants=outcome.participants,
        fl_strategy=s.strategy,
        dp=s.dp.lineage(),  # type: ignore[arg-type]
    )


def hand_off(
    outcome: RunOutcome,
    registry: Registry,
    versions: VersionLister,
    key: Ed25519PrivateKey,
    *,
    margin: float = 0.02,
    out_dir: Path | None = None,
) -> HandOff:
    """Turn the run's final weights into a signed int8 bundle and register it with lineage.

    The bundle is evaluated on the cloud's holdout data against the run's parent
    (``settings.parent``, the version it started from; else the current, newest not
    rejected, version); worse by more than ``margin`` registers it with
    ``metrics.fl_rejected = 1`` and a description saying so, so assignments skip it.
    """
    s = outcome.settings
    existing = versions.models(s.model)
    parent = _parent(existing, s.parent) if s.parent else current_model(existing)
    trained = from_weights(
        s.model, keras_weights(s, outcome.weights), seed=s.seed, small=True, epochs=s.rounds
    )
    lineage = run_lineage(outcome, parent.ref if parent else None)
    directory = Path(out_dir or tempfile.mkdtemp(prefix="edgefleet-fl-bundle-")) / "bundle"
    bundle = bundle_from_trained(
        trained, directory, key, version=next_version(existing), lineage=lineage
    )
    metric = PRIMARY_METRIC[trained.spec.task]
    value = float(bundle.manifest.metrics[metric])
    baseline = None
    if parent is not None:
        baseline = evaluate_registered(registry, parent, trained.spec, trained.data)[metric]
    rejected = baseline is not None and value < baseline - margin
    extra: dict[str, float] = {}
    if baseline is not None:
        extra[f"fl_baseline_{metric}"] = baseline
        extra[REJECTED] = 1.0 if rejected else 0.0
    if extra:
        note = (
            f"[rejected: {metric} {value:.4f} is below {parent.ref if parent else ''} "
            f"{baseline:.4f} by more than {margin}] "
            if rejected
            else ""
        )
        bundle = _resign(bundle, key, extra, note)
    with tempfile.TemporaryDirectory(prefix="edgefleet-fl-pack-") as tmp:
        archive = Path(tmp) / "bundle.tar.gz"
        pack_bundle(bundle.path, archive)
        version = registry.push(archive.read_bytes())
    return HandOff(version, metric, value, baseline, parent.ref if parent else None, rejected)
