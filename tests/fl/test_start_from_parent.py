"""A federated run fine-tunes the registered version: it starts from the bundle's float weights.

Real parts: a registry holding the zoo's signed vibration-anomaly bundle (with its
``weights.npz``), a SuperLink and two supervised SuperNodes training with LiteRT on agent
databases, the hand-off registering the child. The fallback run uses a version whose bundle
was signed without the weights file.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import msgspec
import numpy as np
import pytest
from support.fl_fleet import Fleet, fill_agent_db, vibration_windows
from support.models_zoo import Zoo, shared_zoo

from edgefleet.cloud.errors import NotFound
from edgefleet.cloud.fl.apps.outcome import run_on_superlink
from edgefleet.cloud.fl.apps.prepare import prepare_run
from edgefleet.cloud.fl.errors import FlSettingsError
from edgefleet.cloud.fl.runs.handoff import REJECTED, hand_off
from edgefleet.cloud.fl.runs.origin import StartPoint, choose_version, start_point
from edgefleet.cloud.fl.settings import RunSettings
from edgefleet.cloud.fl.superlink.process import SuperLink
from edgefleet.cloud.registry import ModelRegistry
from edgefleet.cloud.store import open_store
from edgefleet.cloud.store.base import ModelVersion
from edgefleet.models.trainable import reference
from edgefleet.models.trainable.weights import WEIGHTS_FILE
from edgefleet.models.training import load_trained
from edgefleet.protocol import signing
from edgefleet.protocol.bundle import pack_bundle, read_manifest, write_bundle

MODEL = "vibration-anomaly"
PARENT = f"{MODEL}@1.0.0"


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Zoo:
    base = tmp_path_factory.getbasetemp()
    # This run's zoo (shared by xdist workers), never one an earlier run left behind.
    return shared_zoo(base.parent if base.name.startswith("popen-gw") else base)


def _registry(zoo: Zoo, root: Path, bundle_dir: Path) -> tuple[ModelRegistry, object]:
    store = open_store(f"sqlite:///{root / 'cloud.db'}")
    registry = ModelRegistry(root / "registry", store, [signing.load_public_key(zoo.public_key)])
    archive = root / "v1.tar.gz"
    pack_bundle(bundle_dir, archive)
    registry.push(archive.read_bytes())
    return registry, store


def _without_weights(zoo: Zoo, tmp_path: Path) -> Path:
    """The zoo's bundle re-signed without its weights file (as bundles were before)."""
    directory = Path(shutil.copytree(zoo.builds[MODEL].bundle("litert"), tmp_path / "old"))
    manifest = read_manifest(directory)
    (directory / WEIGHTS_FILE).unlink()
    for name in ("manifest.json", "manifest.sig"):
        (directory / name).unlink()
    roles = {f.path: f.role for f in manifest.files if f.path != WEIGHTS_FILE}
    write_bundle(directory, manifest, signing.load_private_key(zoo.private_key), roles)  # type: ignore[arg-type]
    return directory


def _settings(tmp_path: Path, name: str, start: StartPoint) -> RunSettings:
    return RunSettings(
        model=MODEL,
        rounds=1,
        min_clients=2,
        workdir=str(tmp_path / name),
        epochs=3,
        lr=0.1,
        round_timeout_s=120,
        quorum_timeout_s=90,
        parent=start.parent,
    )


@pytest.mark.slow(seconds=75)
def test_run_from_1_0_0_starts_at_its_weights_and_registers_a_child(zoo: Zoo, tmp_path: Path):
    registry, store = _registry(zoo, tmp_path / "cloud", zoo.builds[MODEL].bundle("litert"))
    old_registry, old_store = _registry(
        zoo, tmp_path / "old-cloud", _without_weights(zoo, tmp_path)
    )
    fleet = Fleet(SuperLink(tmp_path / "link").start())
    try:
        start = start_point(MODEL, registry, store, "1.0.0")  # type: ignore[arg-type]
        assert (start.parent, start.source) == (PARENT, "parent")
        assert start.weights is not None
        parent_weights = load_trained(zoo.builds[MODEL].trained_dir).weights()
        assert all(np.array_equal(a, b) for a, b in zip(start.weights, parent_weights, strict=True))
        fallback = start_point(MODEL, old_registry, old_store)  # type: ignore[arg-type]
        assert (fallback.parent, fallback.source, fallback.weights) == (PARENT, "fresh", None)
        assert WEIGHTS_FILE in fallback.note
        assert "fresh" in fallback.note

        tuned = _settings(tmp_path, "tuned", start)
        prepared = prepare_run(tuned, start.weights)
        parent_loss = prepared.holdout()["loss"]
        fresh = _settings(tmp_path, "fresh", fallback)
        fresh_prepared = prepare_run(fresh, fallback.weights)
        fresh_loss = fresh_prepared.holdout()["loss"]
        assert fresh_loss > parent_loss  # a seeded, untrained autoencoder reconstructs badly

        for i in range(2):
            db = fill_agent_db(tmp_path / f"agent{i}.db", MODEL, vibration_windows(100 + i, 160))
            fleet.add_node(db, f"agent{i}")
        outcome = run_on_superlink(tuned, fleet.link, timeout=300)
        fresh_outcome = run_on_superlink(fresh, fleet.link, timeout=300)
    finally:
        fleet.stop()
    first, fresh_first = outcome.rounds[0], fresh_outcome.rounds[0]
    assert first["status"] == fresh_first["status"] == "aggregated"
    # The ClientApps trained the weights they received: the parent's loss on the device data,
    # not the fresh model's (nor the weights baked into the trainable model's init).
    device_x = np.concatenate([vibration_windows(100 + i, 160) for i in range(2)])
    assert first["client_loss_before"] == pytest.approx(
        reference.loss(prepared.spec, parent_weights, device_x, None), rel=0.05
    )
    assert first["client_loss_before"] < 0.5 * fresh_first["client_loss_before"]
    # One round of fine-tuning is at or below the parent on the holdout; the fresh start is not.
    assert first["holdout"]["loss"] <= parent_loss
    assert fresh_first["holdout"]["loss"] > parent_loss
    print(
        f"holdout loss: parent {parent_loss:.4f}, fine-tuned round 1 {first['holdout']['loss']:.4f}"
        f", fresh start {fresh_loss:.4f} -> round 1 {fresh_first['holdout']['loss']:.4f}"
    )

    key = signing.load_private_key(zoo.private_key)
    try:
        result = hand_off(outcome, registry, store, key, out_dir=tmp_path / "child")  # type: ignore[arg-type]
    finally:
        store.close()  # type: ignore[attr-defined]
        old_store.close()  # type: ignore[attr-defined]
    assert result.version.version == "1.0.1"
    assert result.version.lineage["parent"] == PARENT
    assert result.baseline_ref == PARENT
    assert result.baseline is not None
    assert result.version.metrics[REJECTED] == float(result.rejected)
    print(f"roc_auc: parent {result.baseline:.4f}, child {result.value:.4f}")


def _version(version: str, rejected: bool = False) -> ModelVersion:
    return ModelVersion(
        name=MODEL, version=version, sha256="0" * 64, size=1, runtime="litert", key_id="k",
        description="", metrics={REJECTED: 1.0} if rejected else {}, lineage={}, manifest={},
        created_at=0.0, uploaded_at=0.0,
    )  # fmt: skip


def test_the_start_version_is_the_newest_not_rejected_or_the_one_asked_for():
    newest_first = [_version("1.0.2", rejected=True), _version("1.0.1"), _version("1.0.0")]
    assert choose_version(newest_first, MODEL).version == "1.0.1"  # type: ignore[union-attr]
    assert choose_version(newest_first, MODEL, "1.0.0").version == "1.0.0"  # type: ignore[union-attr]
    assert choose_version(newest_first, MODEL, f"{MODEL}@1.0.2").version == "1.0.2"  # type: ignore[union-attr]
    assert choose_version([], MODEL) is None
    for bad, match in (("9.9.9", "not registered"), ("digits@1.0.0", "names model"), ("", "empty")):
        with pytest.raises(FlSettingsError, match=match) as info:
            choose_version(newest_first, MODEL, bad)
        assert info.value.reason == "unknown-version"


def test_no_registered_version_starts_fresh_and_a_missing_archive_is_an_error(
    zoo: Zoo, tmp_path: Path
):
    registry, store = _registry(zoo, tmp_path, zoo.builds[MODEL].bundle("litert"))
    try:
        start = start_point("digits", registry, store)  # type: ignore[arg-type]
        assert (start.parent, start.weights, start.source) == (None, None, "fresh")
        assert "no registered version of digits" in start.note
        shutil.rmtree(tmp_path / "registry" / "blobs")
        with pytest.raises(NotFound, match="missing"):
            start_point(MODEL, registry, store)  # type: ignore[arg-type]
    finally:
        store.close()  # type: ignore[attr-defined]


def test_run_settings_keep_the_parent(tmp_path: Path):
    s = RunSettings(model=MODEL, rounds=1, min_clients=1, workdir=str(tmp_path), parent=PARENT)
    assert RunSettings.read(s.write()).parent == PARENT
    assert msgspec.json.decode(s.settings_path.read_bytes())["parent"] == PARENT
