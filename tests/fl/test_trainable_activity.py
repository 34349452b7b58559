"""``activity`` (1D-CNN): a dense head trains in LiteRT over a frozen convolutional base.

The run is prepared from a "parent" (a differently seeded build standing in for a registered
version), so the tests also show that the frozen base is the parent's, not a fresh one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.cloud.fl.apps.prepare import Prepared, prepare_run
from edgefleet.cloud.fl.runs.handoff import keras_weights
from edgefleet.cloud.fl.settings import RunSettings
from edgefleet.edge.fl.trainer import LiteRTTrainer
from edgefleet.models.errors import UnsupportedVariant
from edgefleet.models.trainable import reference
from edgefleet.models.trainable.builder import freeze_base
from edgefleet.models.trainable.spec import FrozenBase, TrainableSpec, spec_from_keras
from edgefleet.models.zoo import get_model

LR = 0.05
BASE_ARRAYS = 6  # three Conv1D layers: kernel and bias each


@dataclass(frozen=True)
class ActivityRun:
    """A prepared activity run and the parent weights it started from."""

    settings: RunSettings
    prepared: Prepared
    parent: list[np.ndarray]
    tflite: bytes


@pytest.fixture(scope="module")
def activity_run(tmp_path_factory: pytest.TempPathFactory) -> ActivityRun:
    """prepare_run of ``activity`` from a seed-1 parent (the run itself builds seed 0).

    The parent is trained a little: an untrained CNN's near-uniform outputs miss the int8
    bundle's parity bar.
    """
    from edgefleet.models.training import train_model

    parent = train_model("activity", epochs=3, seed=1, small=True).weights()
    root = tmp_path_factory.mktemp("activity")
    settings = RunSettings(model="activity", rounds=1, min_clients=1, workdir=str(root / "run"))
    prepared = prepare_run(settings, parent)
    return ActivityRun(settings, prepared, parent, settings.trainable_path.read_bytes())


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 64, 3)).astype(np.float32), rng.integers(0, 4, n).astype(np.int64)


def _keras_frozen(run: ActivityRun) -> Any:
    """The Keras activity model at the parent's weights, base frozen, plain SGD."""
    import keras

    model = get_model("activity").build(0)
    model.set_weights(run.parent)
    freeze_base(model, run.prepared.spec)
    model.compile(optimizer=keras.optimizers.SGD(LR), loss="sparse_categorical_crossentropy")
    return model


@pytest.mark.slow(seconds=20)
def test_the_run_freezes_the_parents_base_and_exchanges_the_head(activity_run):
    spec, parent = activity_run.prepared.spec, activity_run.parent
    assert spec.base is not None
    assert spec.input_dim == 64 * 3
    assert spec.shapes() == [(64, 32), (32,), (32, 4), (4,)]
    assert len(spec.keras_shapes()) == BASE_ARRAYS + 4
    assert all(
        np.array_equal(a, b) for a, b in zip(spec.base.weights, parent[:BASE_ARRAYS], strict=True)
    )
    head = activity_run.prepared.initial
    assert all(np.array_equal(a, b) for a, b in zip(head, parent[BASE_ARRAYS:], strict=True))
    # The spec the server evaluates with (spec.json) carries the base exactly.
    on_disk = TrainableSpec.from_json(json.loads(activity_run.settings.spec_path.read_text()))
    assert on_disk == spec
    # The device's model starts at the parent's head and predicts like Keras and numpy.
    trainer = LiteRTTrainer(activity_run.tflite)
    assert trainer.input_dim == 192
    assert trainer.labelled
    assert all(np.array_equal(a, b) for a, b in zip(trainer.get_weights(), head, strict=True))
    x, _ = _data(40, 3)
    keras_model = _keras_frozen(activity_run)
    keras_out = keras_model.predict(x, verbose=0)
    np.testing.assert_allclose(trainer.predict(x), keras_out, atol=1e-5)
    np.testing.assert_allclose(reference.forward(spec, head, x), keras_out, atol=1e-5)
    # The server's holdout evaluation (numpy, windows as the dataset has them) agrees.
    data = activity_run.prepared.data
    keras_acc = (keras_model.predict(data.x_test, verbose=0).argmax(1) == data.y_test).mean()
    assert activity_run.prepared.holdout()["accuracy"] == pytest.approx(keras_acc, abs=1e-3)
    # Weights round-trip through the trainable model bit for bit.
    rng = np.random.default_rng(0)
    new = [rng.normal(size=w.shape).astype(np.float32) for w in head]
    trainer.set_weights(new)
    assert all(np.array_equal(a, b) for a, b in zip(trainer.get_weights(), new, strict=True))


@pytest.mark.slow
def test_litert_trains_the_head_like_keras_with_the_base_frozen(activity_run):
    steps, b = 6, activity_run.prepared.spec.batch
    x, y = _data(b * steps, 1)
    model = _keras_frozen(activity_run)
    assert len(model.trainable_weights) == 4  # the head only: the parameters devices train
    keras_losses = [
        float(np.ravel(model.train_on_batch(x[i * b : (i + 1) * b], y[i * b : (i + 1) * b]))[0])
        for i in range(steps)
    ]
    trainer = LiteRTTrainer(activity_run.tflite)
    lite_losses = []
    for i in range(steps):
        xb, yb = x[i * b : (i + 1) * b], y[i * b : (i + 1) * b]
        lite_losses.append(trainer.evaluate(xb, yb))
        trainer.fit(xb.reshape(b, -1), yb, epochs=1, lr=LR, seed=0)
    np.testing.assert_allclose(lite_losses, keras_losses, rtol=1e-3, atol=1e-4)
    keras_after = [np.asarray(w) for w in model.get_weights()]
    # Keras left the base alone, and the head moved as on the device.
    parent = activity_run.parent
    for got, want in zip(keras_after[:BASE_ARRAYS], parent[:BASE_ARRAYS], strict=True):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(trainer.get_weights(), keras_after[BASE_ARRAYS:], strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5)
    assert not np.array_equal(trainer.get_weights()[0], parent[BASE_ARRAYS])


@pytest.mark.slow
def test_a_head_only_update_reaches_the_int8_bundle_with_the_parents_base(activity_run, tmp_path):
    from edgefleet.models.bundler import bundle_from_trained
    from edgefleet.models.runner import load_runner
    from edgefleet.models.trainable.weights import WEIGHTS_FILE, read_weights
    from edgefleet.models.training import from_weights

    # The device's update: the head trained in LiteRT on the run's data.
    data = activity_run.prepared.data
    assert data.y_train is not None
    trainer = LiteRTTrainer(activity_run.tflite)
    trainer.fit(data.x_train, data.y_train, epochs=3, lr=0.1, seed=0)
    new_head = trainer.get_weights()
    full = keras_weights(activity_run.settings, new_head)
    parent = activity_run.parent
    assert all(np.array_equal(a, b) for a, b in zip(full[:BASE_ARRAYS], parent, strict=False))
    key = Ed25519PrivateKey.generate()
    parent_bundle = bundle_from_trained(
        from_weights("activity", parent, small=True), tmp_path / "parent", key, version="1.0.0"
    )
    child_bundle = bundle_from_trained(
        from_weights("activity", full, small=True), tmp_path / "child", key, version="1.0.1"
    )

    def outputs(bundle: Any) -> np.ndarray:
        m = bundle.manifest
        return load_runner(m.runtime, Path(bundle.path) / m.model_file).run(x)

    x = data.x_test[:256]
    assert child_bundle.manifest.quantization == "int8"
    diff = float(np.abs(outputs(child_bundle) - outputs(parent_bundle)).max())
    print(f"int8 outputs of the head-only update differ from the parent's by up to {diff:.4f}")
    assert diff > 0.02
    # The bundle carries the whole Keras model (base first) for the next run, exactly.
    carried = read_weights(Path(child_bundle.path) / WEIGHTS_FILE, activity_run.prepared.spec)
    assert all(np.array_equal(a, b) for a, b in zip(carried, full, strict=True))


def test_spec_with_a_frozen_base_round_trips_and_refuses_what_it_cannot_run():
    import keras

    ref = get_model("activity")
    spec = spec_from_keras("activity", ref.task, ref.build(0))
    assert isinstance(spec.base, FrozenBase)
    assert TrainableSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
    other = spec_from_keras("activity", ref.task, ref.build(1))
    assert other != spec  # same layers, other frozen weights
    head = [np.zeros(s, np.float32) for s in spec.shapes()]
    with pytest.raises(UnsupportedVariant):
        spec.keras_weights(head[:2])
    assert len(spec.keras_weights(head)) == len(spec.keras_shapes())
    # A convolution after the pooling, or a 2D convolution, cannot run.
    inp = keras.Input((16, 3))
    h = keras.layers.GlobalAveragePooling1D()(keras.layers.Conv1D(4, 3)(inp))
    h = keras.layers.Dense(2, activation="softmax")(keras.layers.Reshape((1, 4))(h))
    with pytest.raises(UnsupportedVariant):
        spec_from_keras("x", "classify", keras.Model(inp, h))
    inp2 = keras.Input((8, 8, 1))
    h2 = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inp2))
    with pytest.raises(UnsupportedVariant, match="Conv2D"):
        spec_from_keras("y", "classify", keras.Model(inp2, keras.layers.Dense(2, "softmax")(h2)))


@pytest.mark.slow(seconds=60)
def test_a_simulated_activity_run_trains_the_head_on_the_parents_base(activity_run, tmp_path):
    pytest.importorskip("ray")
    from edgefleet.cloud.fl.apps.prepare import write_partitions
    from edgefleet.cloud.fl.apps.simulation import simulate

    settings = RunSettings(
        model="activity",
        rounds=2,
        min_clients=3,
        workdir=str(tmp_path / "run"),
        epochs=1,
        data_dir=str(tmp_path / "data"),
    )
    prepared = prepare_run(settings, activity_run.parent)
    start = prepared.holdout()
    # The clients read windows from their buffers as flat rows of 64 x 3 floats.
    write_partitions(tmp_path / "data", "activity", prepared.data, 3, alpha=0.5, seed=0)
    outcome = simulate(settings, 3)
    print(
        start,
        [
            (r["status"], r["replies"], r["reason"], round(r["seconds"], 1), r["holdout"])
            for r in outcome.rounds
        ],
    )
    assert [r["replies"] for r in outcome.rounds] == [3, 3]
    assert outcome.rounds[-1]["holdout"]["loss"] < start["loss"]
    full = keras_weights(settings, outcome.weights)
    parent = activity_run.parent
    assert all(np.array_equal(a, b) for a, b in zip(full[:BASE_ARRAYS], parent, strict=False))
    assert not np.array_equal(full[BASE_ARRAYS], parent[BASE_ARRAYS])
