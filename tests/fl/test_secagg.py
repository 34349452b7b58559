"""SecAgg+ on a loopback deployment: real SuperLink, three real SuperNodes, LiteRT training.

The secure aggregate is checked against plain FedAvg of the same client updates: both runs
start from the same weights on the same buffers with the same seeds (LiteRT training is
deterministic), so they differ only by SecAgg+'s quantisation.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from support.fl_fleet import Fleet, fill_agent_db, vibration_windows

from edgefleet.cloud.fl.apps.outcome import run_on_superlink
from edgefleet.cloud.fl.apps.prepare import prepare_run
from edgefleet.cloud.fl.apps.rounds import load_weights, read_rounds
from edgefleet.cloud.fl.errors import FlSettingsError, QuorumNotReached
from edgefleet.cloud.fl.secagg.link import (
    CLIENT_APP,
    SECAGG_APP_TOML,
    SERVER_APP,
    SecAggLink,
    run_secagg,
)
from edgefleet.cloud.fl.secagg.settings import SecAggSettings
from edgefleet.cloud.fl.settings import RunSettings
from edgefleet.cloud.fl.superlink.process import SuperLink
from edgefleet.edge.fl.config import FlConfig, supernode_command
from edgefleet.edge.fl.progress import read_notes
from edgefleet.edge.fl.supervisor import SuperNodeSupervisor

MODEL = "vibration-anomaly"


def _add_node(fleet: Fleet, db: Path, status: Path) -> None:
    """A supervised SuperNode that notes its rounds in ``status``, as the agent's does."""
    config = FlConfig(enabled=True, superlink=fleet.link.address, max_cpu_percent=0.0)
    cmd = supernode_command(config, db, {"status": str(status)})
    log = logging.getLogger(f"test.fl.{db.stem}")
    sup = SuperNodeSupervisor(lambda: cmd, log, restart_min_s=0.5, restart_max_s=2.0)
    fleet.supervisors.append(sup.start())


def _fleet(tmp_path: Path, sizes: list[int]) -> Fleet:
    fleet = Fleet(SuperLink(tmp_path / "link").start())
    try:
        for i, n in enumerate(sizes):
            db = tmp_path / f"agent{i}.db"
            if n:  # 0: no agent database, the device refuses with no-training-data
                fill_agent_db(db, MODEL, vibration_windows(100 + i, n))
            _add_node(fleet, db, tmp_path / f"agent{i}.status")
    except BaseException:
        fleet.stop()
        raise
    return fleet


def _secagg_view(link: SuperLink) -> SecAggLink:
    """The same running SuperLink, submitting the SecAgg+ apps."""
    return SecAggLink(link.workdir, host=link.host, port=link.port)


def test_settings_resolve_the_threshold_and_the_quorum():
    three = RunSettings(model=MODEL, rounds=1, min_clients=3, workdir=".")
    assert SecAggSettings().threshold(three) == 2
    assert SecAggSettings().quorum(dataclasses.replace(three, min_clients=1)) == 2
    assert SecAggSettings(num_shares=5, reconstruction_threshold=4).quorum(three) == 4
    assert SecAggSettings().workflow_args(three)["max_weight"] == three.max_samples
    for bad in ({"num_shares": 2}, {"reconstruction_threshold": 1}, {"num_shares": 3,
                "reconstruction_threshold": 3}):  # fmt: skip
        with pytest.raises(FlSettingsError):
            SecAggSettings(**bad)
    assert f'serverapp = "{SERVER_APP}"' in SECAGG_APP_TOML
    assert f'clientapp = "{CLIENT_APP}"' in SECAGG_APP_TOML


@pytest.mark.slow(seconds=100)
def test_a_secagg_round_aggregates_like_fedavg(tmp_path):
    # One round each: the secure sum is compared with FedAvg of the same updates. A second
    # round repeats the same four stages with fresh keys and doubled the suite's slowest test.
    plain = RunSettings(
        model=MODEL,
        rounds=1,
        min_clients=3,
        workdir=str(tmp_path / "plain"),
        epochs=3,
        lr=0.1,
        round_timeout_s=120,
        quorum_timeout_s=120,
    )
    prepared = prepare_run(plain)
    secure = dataclasses.replace(plain, workdir=str(tmp_path / "secure"))
    shutil.copytree(plain.root, secure.root)
    # Different buffer sizes: a wrong (unweighted) average would differ from FedAvg.
    fleet = _fleet(tmp_path, [100, 160, 240])
    try:
        fedavg = run_on_superlink(plain, fleet.link, timeout=400)
        outcome = run_secagg(secure, SecAggSettings(), _secagg_view(fleet.link), timeout=500)
    finally:
        fleet.stop()
    for rec in fedavg.rounds + outcome.rounds:
        print(f"round {rec['round']} {rec['status']} {rec['seconds']:.1f} s {rec['holdout']}")
    assert [r["status"] for r in outcome.rounds] == ["aggregated"]
    assert all(r["replies"] == 3 and r["examples"] == 500 for r in outcome.rounds)
    assert outcome.participants == 3
    assert outcome.rounds[0]["holdout"]["loss"] < prepared.holdout()["loss"]
    # Same client updates, so the same client losses as FedAvg's round 1 (before aggregation).
    assert outcome.rounds[0]["client_loss_after"] == pytest.approx(
        fedavg.rounds[0]["client_loss_after"], rel=1e-6
    )
    # The aggregate is FedAvg's within the quantisation (one step, 16 / 2**22, per client over
    # the summed weight ratios 500 / 1000: <= 2.3e-5 a round), while the round moved the
    # weights far more than that.
    gap = max(
        float(np.abs(a - b).max()) for a, b in zip(outcome.weights, fedavg.weights, strict=True)
    )
    moved = max(
        float(np.abs(a - b).max()) for a, b in zip(fedavg.weights, prepared.initial, strict=True)
    )
    print(f"max |secagg - fedavg| = {gap:.2e}, max |fedavg - initial| = {moved:.2e}")
    assert gap < 2.5e-4
    assert moved > 20 * gap
    for ours, theirs in zip(outcome.rounds, fedavg.rounds, strict=True):
        assert ours["holdout"]["loss"] == pytest.approx(theirs["holdout"]["loss"], abs=2e-5)
    # Each device noted the round of both runs (the SecAgg+ one after its unmask reply),
    # which is what ends an agent's on-demand SuperNode.
    for i, n in enumerate([100, 160, 240]):
        notes = read_notes(tmp_path / f"agent{i}.status")
        assert [(x.round, x.rounds, x.outcome, x.examples) for x in notes] == [
            (1, 1, "trained", n)
        ] * 2


@pytest.mark.slow(seconds=25)
def test_secagg_round_below_the_threshold_ends_with_a_reason(tmp_path):
    # min_clients 1, but SecAgg+ needs its reconstruction threshold (2) of clients.
    settings = RunSettings(
        model=MODEL,
        rounds=1,
        min_clients=1,
        workdir=str(tmp_path / "run"),
        round_timeout_s=20,
        quorum_timeout_s=3,
    )
    prepare_run(settings)
    fleet = _fleet(tmp_path, [100])
    try:
        with pytest.raises(QuorumNotReached, match="of 2 clients connected"):
            run_secagg(settings, SecAggSettings(), _secagg_view(fleet.link), timeout=120)
    finally:
        fleet.stop()
    (rec,) = read_rounds(settings.rounds_path)
    assert rec["status"] == "skipped"
    assert "reconstruction threshold 2" in rec["reason"]
    assert settings.result_path.is_file()


@pytest.mark.slow(seconds=110)
def test_secagg_aggregates_the_survivors_when_a_client_drops_out(tmp_path):
    # The third device joins the setup and key sharing, then refuses to train (no data).
    strict = RunSettings(
        model=MODEL,
        rounds=1,
        min_clients=3,
        workdir=str(tmp_path / "strict"),
        round_timeout_s=120,
        quorum_timeout_s=120,
    )
    prepared = prepare_run(strict)
    lenient = dataclasses.replace(strict, min_clients=2, workdir=str(tmp_path / "lenient"))
    shutil.copytree(strict.root, lenient.root)
    fleet = _fleet(tmp_path, [100, 160, 0])
    try:
        # Quorum 3: all three take part; two in the secure sum are below it, the model stays.
        with pytest.raises(QuorumNotReached, match="2 of 3 clients in the secure sum"):
            run_secagg(strict, SecAggSettings(), _secagg_view(fleet.link), timeout=400)
        # Quorum 2 (all three still connected): SecAgg+ removes the dropped client's masks
        # with the survivors' shares and aggregates the two others.
        outcome = run_secagg(lenient, SecAggSettings(), _secagg_view(fleet.link), timeout=400)
    finally:
        fleet.stop()
    kept = load_weights(strict.result_path)
    assert all(np.array_equal(a, b) for a, b in zip(kept, prepared.initial, strict=True))
    (rec,) = outcome.rounds
    summary = (rec["status"], rec["sampled"], rec["replies"], rec["failures"], rec["examples"])
    assert summary == ("aggregated", 3, 2, 1, 260)
    assert outcome.participants == 2
    assert rec["holdout"]["loss"] != prepared.holdout()["loss"]
    notes = read_notes(tmp_path / "agent2.status")
    assert [(n.outcome, n.reason) for n in notes] == [("refused", "no-training-data")] * 2
