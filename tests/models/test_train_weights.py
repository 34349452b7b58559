"""Zoo bundles carry the float weights of their trainable part (``weights.npz``, role train)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from support.models_zoo import RUNTIMES, Zoo

from edgefleet.models.errors import WeightsFileError
from edgefleet.models.trainable.spec import spec_from_keras
from edgefleet.models.trainable.weights import (
    WEIGHTS_FILE,
    bundle_weights,
    read_weights,
    weights_entry,
    write_weights,
)
from edgefleet.models.training import from_weights, load_trained
from edgefleet.protocol import signing
from edgefleet.protocol.bundle import verify_bundle
from edgefleet.protocol.errors import HashMismatch

DENSE = ("digits", "vibration-anomaly")


def _trusted(zoo: Zoo) -> list:
    return [signing.load_public_key(zoo.public_key)]


@pytest.mark.slow
@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("name", DENSE)
def test_bundle_weights_round_trip_to_keras_exactly(zoo: Zoo, name: str, runtime: str) -> None:
    build = zoo.builds[name]
    bundle = verify_bundle(build.bundle(runtime), _trusted(zoo))
    entry = weights_entry(bundle.manifest)
    assert entry is not None
    assert (entry.path, entry.role) == (WEIGHTS_FILE, "train")
    trained = load_trained(build.trained_dir)
    spec = spec_from_keras(name, trained.spec.task, trained.keras_model)
    weights = bundle_weights(bundle.path, bundle.manifest, spec)
    assert weights is not None
    original = trained.weights()
    assert len(weights) == len(original) == len(spec.shapes())
    assert all(np.array_equal(a, b) for a, b in zip(weights, original, strict=True))
    # Into a fresh Keras model and out again: bit for bit.
    again = from_weights(name, weights, small=True).weights()
    assert all(np.array_equal(a, b) for a, b in zip(again, original, strict=True))
    # Small: the float32 arrays and a little zip overhead, no second copy of anything.
    params = sum(w.size for w in original)
    assert entry.size <= 4 * params + 2048


@pytest.mark.slow
def test_a_frozen_base_model_carries_its_whole_keras_model(zoo: Zoo) -> None:
    # activity trains a dense head over a frozen conv base; the next run freezes this base.
    build = zoo.builds["activity"]
    bundle = verify_bundle(build.bundle("litert"), _trusted(zoo))
    assert weights_entry(bundle.manifest) is not None
    trained = load_trained(build.trained_dir)
    spec = spec_from_keras("activity", trained.spec.task, trained.keras_model)
    weights = bundle_weights(bundle.path, bundle.manifest, spec)
    assert weights is not None
    assert len(weights) == len(spec.keras_shapes()) > len(spec.shapes())
    original = trained.weights()
    assert all(np.array_equal(a, b) for a, b in zip(weights, original, strict=True))


@pytest.mark.slow
def test_a_swapped_weights_file_is_refused(zoo: Zoo, tmp_path: Path) -> None:
    src = zoo.builds["digits"].bundle("litert")
    bundle = verify_bundle(Path(shutil.copytree(src, tmp_path / "b")), _trusted(zoo))
    with np.load(bundle.path / WEIGHTS_FILE) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["w00"] = arrays["w00"] + 1.0
    np.savez_compressed(bundle.path / WEIGHTS_FILE, **arrays)
    # The device's verification lists every file, this one included.
    with pytest.raises(HashMismatch):
        verify_bundle(bundle.path, _trusted(zoo))
    # A reader holding an already verified manifest re-checks the file's sha256.
    with pytest.raises(HashMismatch, match=WEIGHTS_FILE):
        bundle_weights(bundle.path, bundle.manifest)


def _spec():
    from edgefleet.models.trainable.spec import DenseLayer, TrainableSpec

    return TrainableSpec(
        name="tiny", input_dim=3, layers=(DenseLayer(2, "softmax"),), loss="sparse_ce"
    )


def test_weights_file_round_trip_and_bad_files(tmp_path: Path) -> None:
    spec = _spec()
    rng = np.random.default_rng(0)
    weights = [rng.normal(size=s).astype(np.float32) for s in spec.shapes()]
    path = write_weights(tmp_path / "w.npz", spec, weights)
    back = read_weights(path, spec)
    assert all(np.array_equal(a, b) for a, b in zip(back, weights, strict=True))

    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip at all")
    with pytest.raises(WeightsFileError, match="not a weights file"):
        read_weights(bad)
    np.save(tmp_path / "one.npy", weights[0])
    with pytest.raises(WeightsFileError, match="single array"):
        read_weights(tmp_path / "one.npy")
    np.savez(bad, kernel=weights[0], bias=weights[1])
    with pytest.raises(WeightsFileError, match="w00"):
        read_weights(bad)
    np.savez(bad, w00=np.array([{"x": 1}], dtype=object), w01=weights[1])
    with pytest.raises(WeightsFileError):  # pickled objects are never loaded
        read_weights(bad)
    np.savez(bad, w00=np.full((3, 2), np.nan, np.float32), w01=weights[1])
    with pytest.raises(WeightsFileError, match="NaN"):
        read_weights(bad)
    np.savez(bad, w00=np.zeros((4, 2), np.float32), w01=weights[1])
    with pytest.raises(WeightsFileError, match="does not fit") as info:
        read_weights(bad, spec)
    assert info.value.reason == "bad-weights"
