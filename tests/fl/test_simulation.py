"""digits in Flower's simulation: 10 clients, Dirichlet alpha 0.5, against centralised training."""

from __future__ import annotations

import os

import numpy as np
import pytest

from edgefleet.cloud.fl.apps.prepare import dirichlet_partitions, prepare_run, write_partitions
from edgefleet.cloud.fl.settings import RunSettings
from edgefleet.edge.fl.trainer import LiteRTTrainer

CLIENTS, ROUNDS, EPOCHS, LR = 10, 20, 2, 0.1


def test_dirichlet_partitions_cover_every_row_once():
    y = np.repeat(np.arange(10), 50)
    parts = dirichlet_partitions(y, len(y), 10, 0.5, seed=0)
    rows = np.concatenate(parts)
    assert sorted(rows.tolist()) == list(range(len(y)))
    assert all(len(p) > 0 for p in parts)
    # Label skew: some client misses some class entirely at alpha 0.5.
    assert any(len(np.unique(y[p])) < 10 for p in parts)


def test_round_feed_reports_each_round_while_the_engine_runs(tmp_path):
    """``fl simulate``'s progress: rounds are reported as the round loop writes them."""
    import json
    import time

    from edgefleet.cloud.fl.apps.simulation import RoundFeed

    path = tmp_path / "rounds.jsonl"
    got: list[dict[str, int]] = []

    def wait_for(n: int) -> None:
        deadline = time.monotonic() + 20
        while len(got) < n:
            assert time.monotonic() < deadline, got
            time.sleep(0.01)

    with RoundFeed(path, got.append, every_s=0.01), path.open("a") as fh:
        fh.write(json.dumps({"round": 1}) + "\n")
        fh.flush()
        wait_for(1)  # reported while the "engine" still runs
        fh.write('{"round": ')  # a line caught half written is read once whole
        fh.flush()
        time.sleep(0.1)
        assert got == [{"round": 1}]
        fh.write("2}\n")
        fh.flush()
        wait_for(2)
    assert got == [{"round": 1}, {"round": 2}]  # each once


@pytest.mark.slow(seconds=50)
def test_fedavg_reaches_95_percent_of_central_accuracy(tmp_path):
    pytest.importorskip("ray")
    from edgefleet.cloud.fl.apps.simulation import ENGINE_START_ALLOWANCE_S, simulate

    settings = RunSettings(
        model="digits",
        rounds=ROUNDS,
        min_clients=CLIENTS,
        workdir=str(tmp_path / "run"),
        epochs=EPOCHS,
        lr=LR,
        data_dir=str(tmp_path / "data"),
    )
    prepared = prepare_run(settings)
    write_partitions(tmp_path / "data", "digits", prepared.data, CLIENTS, alpha=0.5, seed=0)
    pythonpath = os.environ.get("PYTHONPATH")
    outcome = simulate(settings, CLIENTS)
    # Flower's Ray backend rewrites PYTHONPATH; later child processes must not inherit that.
    assert os.environ.get("PYTHONPATH") == pythonpath
    print([(r["status"], r["reason"][:300]) for r in outcome.rounds if r["status"] != "aggregated"])
    curve = [r["holdout"].get("accuracy", 0.0) for r in outcome.rounds]
    # Centralised: the same trainable parameters, same start, same local optimiser, all data.
    central = LiteRTTrainer(settings.trainable_path.read_bytes())
    central.set_weights(prepared.initial)
    data = prepared.data
    central.fit(data.x_train, data.y_train, epochs=ROUNDS * EPOCHS, lr=LR, seed=0)
    central_acc = float((central.predict(data.x_test).argmax(1) == data.y_test).mean())
    print(f"central {central_acc:.4f} federated curve {[round(a, 4) for a in curve]}")
    assert len(curve) == ROUNDS
    # The ServerApp ran with a deadline that leaves room for Ray's cold start.
    ran = RunSettings.read(settings.settings_path)
    assert ran.round_timeout_s == settings.round_timeout_s + ENGINE_START_ALLOWANCE_S
    assert max(curve) >= 0.95 * central_acc
