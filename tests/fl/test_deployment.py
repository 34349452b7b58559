"""Loopback deployment: a SuperLink, supervised SuperNodes on agent databases, real rounds.

A SuperNode killed mid-round is tested with real agents (test_agents_deployment.py), whose
crash kills the SuperNode's process group exactly as this file's supervisors would.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.fl_fleet import Fleet, fill_agent_db, vibration_windows

from edgefleet.cloud.fl.apps.outcome import run_on_superlink
from edgefleet.cloud.fl.apps.prepare import prepare_run
from edgefleet.cloud.fl.apps.rounds import load_weights, read_rounds
from edgefleet.cloud.fl.runs.handoff import REJECTED, hand_off
from edgefleet.cloud.fl.settings import RunSettings
from edgefleet.cloud.fl.superlink.process import SuperLink
from edgefleet.cloud.registry import ModelRegistry
from edgefleet.cloud.store import open_store
from edgefleet.protocol.bundle import unpack_bundle, verify_bundle

MODEL = "vibration-anomaly"


def _fleet(tmp_path: Path, n: int) -> Fleet:
    fleet = Fleet(SuperLink(tmp_path / "link").start())
    try:
        for i in range(n):
            db = fill_agent_db(tmp_path / f"agent{i}.db", MODEL, vibration_windows(100 + i, 160))
            fleet.add_node(db, f"agent{i}")
    except BaseException:
        fleet.stop()
        raise
    return fleet


@pytest.mark.slow(seconds=75)
def test_three_agents_three_fedavg_rounds_register_a_signed_bundle(tmp_path):
    settings = RunSettings(
        model=MODEL,
        rounds=3,
        min_clients=3,
        workdir=str(tmp_path / "run"),
        epochs=3,
        lr=0.1,
        round_timeout_s=90,
        quorum_timeout_s=90,
    )
    prepare_run(settings)
    fleet = _fleet(tmp_path, 3)
    try:
        outcome = run_on_superlink(settings, fleet.link, timeout=300)
    finally:
        fleet.stop()
    assert [r["status"] for r in outcome.rounds] == ["aggregated"] * 3
    assert outcome.participants == 3
    assert all(r["replies"] == 3 for r in outcome.rounds)
    losses = [r["holdout"]["loss"] for r in outcome.rounds]
    assert losses[-1] < losses[0]
    assert outcome.rounds[0]["client_loss_after"] < outcome.rounds[0]["client_loss_before"]

    key = Ed25519PrivateKey.generate()
    store = open_store(f"sqlite:///{tmp_path / 'cloud.db'}")
    try:
        registry = ModelRegistry(tmp_path / "registry", store, [key.public_key()])
        first = hand_off(outcome, registry, store, key, out_dir=tmp_path / "b1")
        assert first.version.version == "1.0.0"
        assert not first.rejected
        lineage = first.version.lineage
        assert lineage["trained_by"] == "federated"
        assert (lineage["fl_rounds"], lineage["fl_participants"], lineage["fl_strategy"]) == (
            3,
            3,
            "fedavg",
        )
        _, archive = registry.archive(MODEL, "1.0.0")
        bundle = verify_bundle(unpack_bundle(archive, tmp_path / "check"), [key.public_key()])
        assert bundle.manifest.quantization == "int8"
        # A second hand-off is judged against the first; an impossible margin rejects it.
        second = hand_off(outcome, registry, store, key, margin=-1.0, out_dir=tmp_path / "b2")
        assert second.version.version == "1.0.1"
        assert second.baseline_ref == "digits@1.0.0".replace("digits", MODEL)
        assert second.rejected
        assert second.version.metrics[REJECTED] == 1.0
        assert second.version.lineage["parent"] == f"{MODEL}@1.0.0"
    finally:
        store.close()


@pytest.mark.slow(seconds=25)
def test_round_below_quorum_is_skipped_and_model_unchanged(tmp_path):
    settings = RunSettings(
        model=MODEL,
        rounds=1,
        min_clients=2,
        workdir=str(tmp_path / "run"),
        round_timeout_s=20,
        quorum_timeout_s=2,
    )
    prepare_run(settings)
    fleet = _fleet(tmp_path, 1)
    try:
        from edgefleet.cloud.fl.errors import QuorumNotReached

        with pytest.raises(QuorumNotReached, match="1 of 2"):
            run_on_superlink(settings, fleet.link, timeout=120)
    finally:
        fleet.stop()
    # The ServerApp still saved its final weights: the initial ones, untouched.
    result, initial = load_weights(settings.result_path), load_weights(settings.initial_path)
    assert len(result) == len(initial)
    assert all(np.array_equal(a, b) for a, b in zip(result, initial, strict=True))
    assert [r["status"] for r in read_rounds(settings.rounds_path)] == ["skipped"]


@pytest.mark.slow(seconds=25)
def test_stopping_the_superlink_mid_run_leaves_no_serverapp(tmp_path):
    # Flower detaches the SuperLink's SuperExec (and the ServerApps it starts) into a session
    # of their own; a ServerApp left behind retried its HTTP calls for ever.
    import psutil

    settings = RunSettings(
        model=MODEL, rounds=1, min_clients=2, workdir=str(tmp_path / "run"), quorum_timeout_s=600
    )
    prepare_run(settings)
    settings.write()
    link = SuperLink(tmp_path / "link").start()
    me = psutil.Process()

    def serverapps() -> list[psutil.Process]:
        found = []
        for p in me.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if any("flwr-serverapp" in a for a in p.cmdline()):
                    found.append(p)
        return found

    try:
        link.start_run(settings.settings_path)  # waits for a quorum that never comes
        deadline = time.monotonic() + 120
        while not (running := serverapps()) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert running, "the run's ServerApp never started"
    finally:
        link.stop()
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in running)
