"""FedProx's proximal term in the LiteRT ``train`` signature, and client-side (local) DP."""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common import Metadata
from support.fl_models import BuiltTrainable

from edgefleet.cloud.fl.apps.prepare import write_buffer
from edgefleet.cloud.fl.apps.rounds import RoundRunner
from edgefleet.cloud.fl.apps.strategies import make_strategy
from edgefleet.cloud.fl.errors import FlSettingsError
from edgefleet.cloud.fl.settings import DP_KINDS, DpSettings, RunSettings
from edgefleet.edge.fl.clientapp import app, local_dp_from_config
from edgefleet.edge.fl.errors import FlConfigError, TrainableModelError
from edgefleet.edge.fl.local import TrainTask
from edgefleet.edge.fl.trainer import LiteRTTrainer
from edgefleet.models.trainable.builder import build_trainable

LR = 0.05


@pytest.fixture(scope="module")
def legacy_digits(digits_trainable: BuiltTrainable) -> bytes:
    """The digits trainable model with the signatures of before FedProx (no ``mu``)."""
    with tempfile.TemporaryDirectory() as tmp:
        return build_trainable(
            digits_trainable.spec, digits_trainable.weights, Path(tmp), proximal=False
        )


def _batches(n_batches: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 16, (32 * n_batches, 64)).astype(np.float32)
    return x, (np.arange(len(x)) % 10).astype(np.int64)


def _anchor(built: BuiltTrainable) -> list[np.ndarray]:
    # Not the weights baked into init: the anchor must come from set_weights.
    rng = np.random.default_rng(7)
    return [w + rng.normal(0, 0.05, w.shape).astype(np.float32) for w in built.weights]


def _train(model: bytes, start: list[np.ndarray], x, y, *, mu: float) -> list[np.ndarray]:
    trainer = LiteRTTrainer(model)
    trainer.set_weights(start)
    for i in range(len(x) // 32):
        trainer.fit(x[i * 32 : (i + 1) * 32], y[i * 32 : (i + 1) * 32], lr=LR, mu=mu)
    return trainer.get_weights()


def _distance(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return math.sqrt(sum(float(np.sum((u - v) ** 2)) for u, v in zip(a, b, strict=True)))


def _keras_proximal(built: BuiltTrainable, start, x, y, *, mu: float) -> list[np.ndarray]:
    """The same steps in TensorFlow on the Keras model: w -= lr * (grad + mu * (w - anchor))."""
    import keras
    import tensorflow as tf

    model = keras.models.clone_model(built.keras_model)
    model.set_weights(start)
    anchor = [tf.constant(w) for w in start]
    loss_fn = keras.losses.SparseCategoricalCrossentropy()
    for i in range(len(x) // 32):
        with tf.GradientTape() as tape:
            loss = loss_fn(y[i * 32 : (i + 1) * 32], model(x[i * 32 : (i + 1) * 32]))
        grads = tape.gradient(loss, model.trainable_weights)
        for var, g, a in zip(model.trainable_weights, grads, anchor, strict=True):
            var.assign(var - LR * (g + mu * (var - a)))
    return [np.asarray(w) for w in model.get_weights()]


def test_proximal_term_pulls_towards_the_anchor_like_the_keras_reference(digits_trainable):
    x, y = _batches(8, 1)
    start = _anchor(digits_trainable)
    plain = _train(digits_trainable.tflite, start, x, y, mu=0.0)
    prox = _train(digits_trainable.tflite, start, x, y, mu=2.0)
    assert _distance(prox, start) < 0.95 * _distance(plain, start)
    want = _keras_proximal(digits_trainable, start, x, y, mu=2.0)
    for got, ref in zip(prox, want, strict=True):
        np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-5)


def test_mu_zero_is_exactly_the_old_step_and_old_models_still_train(
    digits_trainable, legacy_digits
):
    x, y = _batches(4, 2)
    start = _anchor(digits_trainable)
    new = _train(digits_trainable.tflite, start, x, y, mu=0.0)
    old = _train(legacy_digits, start, x, y, mu=0.0)
    assert all(np.array_equal(a, b) for a, b in zip(new, old, strict=True))
    assert LiteRTTrainer(digits_trainable.tflite).proximal
    legacy = LiteRTTrainer(legacy_digits)
    assert not legacy.proximal
    with pytest.raises(TrainableModelError, match="proximal"):
        legacy.fit(x, y, mu=0.1)
    with pytest.raises(TrainableModelError, match="mu"):
        LiteRTTrainer(digits_trainable.tflite).fit(x, y, mu=-1.0)


def test_local_dp_settings_map_to_local_dp_mod_and_reach_the_round_config(digits_trainable):
    assert "local" in DP_KINDS
    dp = DpSettings(kind="local", noise_multiplier=0.5, clipping_norm=2.0)
    cfg = dp.client_config()
    mod = local_dp_from_config(cfg)
    assert mod is not None
    # LocalDpMod's noise: sensitivity * sqrt(2 ln(1.25/delta)) / epsilon = noise * clip.
    std = mod.sensitivity * math.sqrt(2 * math.log(1.25 / mod.delta)) / mod.epsilon
    assert std == pytest.approx(0.5 * 2.0)
    assert mod.clipping_norm == 2.0
    assert dp.lineage()["kind"] == "local"
    assert dp.lineage()["epsilon"] == pytest.approx(dp.epsilon)
    assert DpSettings(kind="local", noise_multiplier=0.0).epsilon == math.inf
    assert "epsilon" not in DpSettings(kind="local", noise_multiplier=0.0).lineage()
    assert DpSettings().client_config() == {}
    assert DpSettings(kind="server-fixed").client_config() == {}
    with pytest.raises(FlSettingsError):
        DpSettings(kind="local", delta=0.0)
    with pytest.raises(FlConfigError, match="dp-delta"):
        local_dp_from_config({"dp-clipping-norm": 1.0})
    assert local_dp_from_config({"model": "digits"}) is None
    # The server sends the keys; the strategy is not wrapped (the clients do the DP).
    settings = RunSettings(
        model="digits", rounds=1, min_clients=1, workdir="/nonexistent", dp=dp, strategy="fedprox"
    )
    runner = RoundRunner(
        settings,
        make_strategy(settings),
        digits_trainable.spec,
        b"model",
        (np.zeros((1, 64), np.float32), np.zeros(1, np.int64)),
    )
    config = dict(runner._config(1))
    assert {k: config[k] for k in cfg} == cfg
    assert type(make_strategy(settings)).__name__ == "FedProx"


def _message(kind: str, weights, config: dict) -> Message:
    meta = Metadata(
        run_id=1,
        message_id=f"{kind}-1",
        src_node_id=0,
        dst_node_id=1,
        reply_to_message_id="",
        group_id="1",
        created_at=time.time(),
        ttl=60.0,
        message_type=kind,
    )
    content = RecordDict({"arrays": ArrayRecord(weights), "config": ConfigRecord(config)})
    return Message(content=content, metadata=meta)


def test_the_client_clips_and_noises_its_update_with_local_dp(digits_trainable, tmp_path):
    x, y = _batches(4, 3)
    write_buffer(tmp_path / "client-0.db", "digits", x, y)
    # A virtual client (partition 0 reading data-dir), as in Flower's simulation engine.
    context = Context(
        run_id=1, node_id=1, node_config={"partition-id": 0}, state=RecordDict(), run_config={}
    )
    start = digits_trainable.weights
    base = {
        "model": "digits",
        "trainable": digits_trainable.tflite,
        "epochs": 2,
        "lr": LR,
        "data-dir": str(tmp_path),
    }

    def update(dp: DpSettings | None) -> list[np.ndarray]:
        cfg = {**base, **(dp.client_config() if dp else {})}
        reply = app(_message("train", start, cfg), context)
        assert not reply.has_error(), reply.error
        return reply.content.array_records["arrays"].to_numpy_ndarrays()

    plain = update(None)
    clip = 0.25 * _distance(plain, start)
    clipped = update(DpSettings(kind="local", noise_multiplier=0.0, clipping_norm=clip))
    noised = update(DpSettings(kind="local", noise_multiplier=0.01, clipping_norm=clip))
    assert _distance(clipped, start) <= clip * (1 + 1e-4)
    assert _distance(clipped, start) == pytest.approx(clip, rel=1e-3)
    assert _distance(clipped, plain) > 0.5 * clip
    assert _distance(noised, clipped) > 0
    # Noise of std 0.01 * clip per parameter: the noised update stays near the clipped one.
    params = sum(w.size for w in start)
    assert _distance(noised, clipped) < 3 * 0.01 * clip * math.sqrt(params)
    # The mod wraps train only: an evaluate message with the same config is answered as is.
    cfg = {**base, **DpSettings(kind="local", clipping_norm=clip).client_config()}
    reply = app(_message("evaluate", start, cfg), context)
    assert not reply.has_error(), reply.error
    assert reply.content.metric_records["metrics"]["num-examples"] == len(x)


@pytest.mark.slow(seconds=55)
def test_a_simulated_fedprox_run_with_local_dp_completes(tmp_path):
    pytest.importorskip("ray")
    from edgefleet.cloud.fl.apps.prepare import prepare_run, write_partitions
    from edgefleet.cloud.fl.apps.simulation import simulate

    settings = RunSettings(
        model="digits",
        rounds=2,
        min_clients=3,
        workdir=str(tmp_path / "run"),
        strategy="fedprox",
        proximal_mu=0.1,
        dp=DpSettings(kind="local", noise_multiplier=0.01, clipping_norm=1.0),
        epochs=1,
        lr=0.1,
        data_dir=str(tmp_path / "data"),
    )
    prepared = prepare_run(settings)
    write_partitions(tmp_path / "data", "digits", prepared.data, 3, alpha=None, seed=0)
    outcome = simulate(settings, 3)
    print(
        [
            (r["status"], r["replies"], r["reason"], round(r["seconds"], 1), r["holdout"])
            for r in outcome.rounds
        ]
    )
    assert [r["status"] for r in outcome.rounds] == ["aggregated", "aggregated"]
    assert all(r["replies"] == 3 for r in outcome.rounds)
    # Every update was clipped to 1.0 (plus noise of std 0.01): so is their mean, per round.
    params = sum(w.size for w in prepared.initial)
    assert _distance(outcome.weights, prepared.initial) <= 2 * (1.0 + 3 * 0.01 * math.sqrt(params))
    assert settings.dp.lineage()["kind"] == "local"


@pytest.mark.skipif(
    not hasattr(TrainTask, "proximal_mu"),
    reason="proximal-mu reaches the trainer through TrainTask (the local.py change is pending)",
)
def test_the_client_app_trains_with_the_servers_proximal_mu(digits_trainable, tmp_path):
    x, y = _batches(4, 4)
    write_buffer(tmp_path / "client-0.db", "digits", x, y)
    context = Context(
        run_id=1, node_id=1, node_config={"partition-id": 0}, state=RecordDict(), run_config={}
    )
    start = _anchor(digits_trainable)
    base = {
        "model": "digits",
        "trainable": digits_trainable.tflite,
        "epochs": 3,
        "lr": LR,
        "data-dir": str(tmp_path),
    }

    def update(mu: float | None) -> list[np.ndarray]:
        cfg = base if mu is None else {**base, "proximal-mu": mu}
        reply = app(_message("train", start, cfg), context)
        assert not reply.has_error(), reply.error
        return reply.content.array_records["arrays"].to_numpy_ndarrays()

    plain, zero, prox = update(None), update(0.0), update(2.0)
    assert all(np.array_equal(a, b) for a, b in zip(plain, zero, strict=True))
    assert _distance(prox, start) < 0.95 * _distance(plain, start)
