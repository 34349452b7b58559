"""Trainable LiteRT variants train like Keras, and weights move between them without loss."""

from __future__ import annotations

import numpy as np
import pytest
from support.fl_models import BuiltTrainable

from edgefleet.edge.fl.errors import BadUpdate, NoTrainingData, TrainableModelError
from edgefleet.edge.fl.trainer import LiteRTTrainer
from edgefleet.models.errors import UnsupportedVariant
from edgefleet.models.trainable import reference
from edgefleet.models.trainable.spec import TrainableSpec, spec_from_keras
from edgefleet.models.zoo import get_model

LR = 0.05


def _keras_sgd_losses(built: BuiltTrainable, x, y, steps: int) -> list[float]:
    """Per-step losses of the same model trained by Keras with plain SGD on the same batches."""
    import keras

    model = keras.models.clone_model(built.keras_model)
    model.set_weights(built.weights)
    loss = "mse" if y is None else "sparse_categorical_crossentropy"
    model.compile(optimizer=keras.optimizers.SGD(LR), loss=loss)
    target = x if y is None else y
    b = built.spec.batch
    return [
        float(
            np.ravel(model.train_on_batch(x[i * b : (i + 1) * b], target[i * b : (i + 1) * b]))[0]
        )
        for i in range(steps)
    ]


def _litert_losses(built: BuiltTrainable, x, y, steps: int) -> tuple[list[float], LiteRTTrainer]:
    trainer = LiteRTTrainer(built.tflite)
    b = built.spec.batch
    losses = []
    for i in range(steps):
        xb, yb = x[i * b : (i + 1) * b], None if y is None else y[i * b : (i + 1) * b]
        # One step on exactly this batch: order = identity, one epoch of one batch.
        losses.append(trainer.evaluate(xb, yb))
        trainer.fit(xb, yb, epochs=1, lr=LR, seed=0)
    return losses, trainer


@pytest.mark.parametrize("name", ["digits", "vibration-anomaly"])
def test_litert_training_matches_keras(name, digits_trainable, vibration_trainable):
    built = digits_trainable if name == "digits" else vibration_trainable
    rng = np.random.default_rng(1)
    steps = 6
    x = rng.normal(0, 1, (built.spec.batch * steps, built.spec.input_dim)).astype(np.float32)
    y = None
    if name == "digits":
        x = np.abs(x) * 5
        y = rng.integers(0, 10, len(x)).astype(np.int64)
    keras_losses = _keras_sgd_losses(built, x, y, steps)
    lite_losses, trainer = _litert_losses(built, x, y, steps)
    # Keras reports the loss before its step on a batch, as we measured it.
    np.testing.assert_allclose(lite_losses, keras_losses, rtol=1e-3, atol=1e-4)
    assert lite_losses[-1] < lite_losses[0] or name == "digits"
    import keras

    model = keras.models.clone_model(built.keras_model)
    model.set_weights(built.weights)
    model.compile(
        optimizer=keras.optimizers.SGD(LR),
        loss="mse" if y is None else "sparse_categorical_crossentropy",
    )
    b = built.spec.batch
    for i in range(steps):
        model.train_on_batch(x[i * b : (i + 1) * b], (x if y is None else y)[i * b : (i + 1) * b])
    for got, want in zip(trainer.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5)


def test_weights_round_trip_exactly(digits_trainable):
    trainer = LiteRTTrainer(digits_trainable.tflite)
    # init restores the Keras weights baked into the model.
    for got, want in zip(trainer.get_weights(), digits_trainable.weights, strict=True):
        np.testing.assert_array_equal(got, want)
    rng = np.random.default_rng(0)
    new = [rng.normal(size=w.shape).astype(np.float32) for w in digits_trainable.weights]
    trainer.set_weights(new)
    for got, want in zip(trainer.get_weights(), new, strict=True):
        np.testing.assert_array_equal(got, want)
    # The same weights give the same outputs in LiteRT, numpy and Keras.
    x = rng.uniform(0, 16, (40, 64)).astype(np.float32)
    model = digits_trainable.keras_model
    keep = model.get_weights()
    model.set_weights(new)
    try:
        keras_out = model.predict(x, verbose=0)
    finally:
        model.set_weights(keep)
    np.testing.assert_allclose(trainer.predict(x), keras_out, atol=1e-5)
    np.testing.assert_allclose(
        reference.outputs(digits_trainable.spec, new, x), keras_out, atol=1e-5
    )


def test_autoencoder_score_matches_reference(vibration_trainable):
    trainer = LiteRTTrainer(vibration_trainable.tflite)
    x = np.random.default_rng(2).normal(size=(50, 192)).astype(np.float32)
    want = reference.outputs(vibration_trainable.spec, vibration_trainable.weights, x)
    np.testing.assert_allclose(trainer.predict(x), want, rtol=1e-4, atol=1e-5)


def test_conv_model_trains_only_a_dense_head():
    # Conv gradients are Flex ops: the base is frozen (tests/fl/test_trainable_activity.py).
    ref = get_model("activity")
    spec = spec_from_keras("activity", ref.task, ref.build(0))
    assert spec.base is not None
    assert [s for s in spec.shapes() if len(s) == 3] == []


def test_spec_json_round_trip_and_bad_spec(digits_trainable):
    spec = digits_trainable.spec
    assert TrainableSpec.from_json(spec.to_json()) == spec
    with pytest.raises(UnsupportedVariant):
        TrainableSpec.from_json({"name": "x"})
    with pytest.raises(UnsupportedVariant, match="shape"):
        reference.check_weights(spec, [w.T for w in digits_trainable.weights])


def test_trainer_refuses_bad_models_and_updates(digits_trainable, tmp_path):
    with pytest.raises(TrainableModelError):
        LiteRTTrainer(b"not a flatbuffer")
    trainer = LiteRTTrainer(digits_trainable.tflite)
    with pytest.raises(BadUpdate, match="expected"):
        trainer.set_weights(digits_trainable.weights[:2])
    with pytest.raises(BadUpdate, match="shape"):
        trainer.set_weights([w.T.copy() for w in digits_trainable.weights])
    with pytest.raises(NoTrainingData):
        trainer.fit(np.zeros((0, 64), np.float32), np.zeros(0, np.int64))
    with pytest.raises(NoTrainingData, match="labelled"):
        trainer.fit(np.zeros((4, 64), np.float32), None)
    # A huge learning rate diverges: the update is refused, never returned.
    x = np.random.default_rng(0).uniform(0, 16, (64, 64)).astype(np.float32)
    with pytest.raises(BadUpdate):
        trainer.fit(x, np.arange(64) % 10, epochs=5, lr=1e30)
