"""The round loop's quorum and deadline, with Flower's real strategies and a stand-in Grid.

Only the transport is replaced: :class:`ScriptedGrid` answers ``send_and_receive`` as Flower's
``GrpcGrid``/``HttpGrid`` do (replies that arrive before the timeout; a node that answers late
or never is simply missing), with clients whose reply time is scripted. So stragglers and
quorum take no SuperLink, no SuperNode and no waiting (the loopback tests in
test_deployment.py and test_agents_deployment.py cover the real processes).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from edgefleet.cloud.fl.apps.rounds import RoundRunner, load_weights, read_rounds
from edgefleet.cloud.fl.apps.strategies import make_strategy
from edgefleet.cloud.fl.settings import RunSettings
from edgefleet.models.trainable.spec import DenseLayer, TrainableSpec

SPEC = TrainableSpec(
    name="tiny-ae",
    input_dim=4,
    layers=(DenseLayer(2, "relu"), DenseLayer(4, "linear")),
    loss="reconstruction",
)


@dataclasses.dataclass
class Client:
    """A scripted device: adds ``step`` to every weight, answering after ``delay_s``."""

    step: float
    delay_s: float = 1.0
    crash: bool = False


class ScriptedGrid(Grid):
    """A Grid whose nodes are :class:`Client` scripts; time passes only in the script."""

    def __init__(self, clients: dict[int, Client]) -> None:
        self.clients = clients
        self.connected = set(clients)
        self.rounds: list[list[int]] = []  # the nodes each round's messages went to
        self.after_round: list[set[int]] = []  # who is connected once round N is over

    def get_node_ids(self) -> Iterable[int]:
        return sorted(self.connected)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        out: list[Message] = []
        sent = list(messages)
        self.rounds.append(sorted(m.metadata.dst_node_id for m in sent))
        for msg in sent:
            client = self.clients[msg.metadata.dst_node_id]
            if timeout is not None and client.delay_s > timeout:
                continue  # still training when the round's deadline passes
            if client.crash:
                out.append(Message(Error(code=1, reason="ClientApp crashed"), reply_to=msg))
                continue
            arrays = msg.content.array_records["arrays"].to_numpy_ndarrays()
            content = RecordDict(
                {
                    "arrays": ArrayRecord([a + np.float32(client.step) for a in arrays]),
                    "metrics": MetricRecord(
                        {"num-examples": 10, "loss-before": 2.0, "loss-after": 1.0}
                    ),
                }
            )
            out.append(Message(content, reply_to=msg))
        if self.after_round:
            self.connected = self.after_round.pop(0)
        return out

    def _unused(self, *_a: object, **_k: object) -> object:
        raise NotImplementedError("the round loop only uses get_node_ids and send_and_receive")

    run = property(_unused)  # type: ignore[assignment]
    create_message = _unused  # type: ignore[assignment]
    set_run = _unused  # type: ignore[assignment]
    push_messages = _unused  # type: ignore[assignment]
    pull_messages = _unused  # type: ignore[assignment]


@pytest.fixture(autouse=True)
def _server_task(monkeypatch: pytest.MonkeyPatch) -> None:
    # Flower's ServerApp runtime sets the task identity that new messages carry.
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)


def _settings(tmp_path: Path, **kw: object) -> RunSettings:
    base: dict[str, object] = {
        "model": "tiny-ae",
        "rounds": 1,
        "min_clients": 2,
        "workdir": str(tmp_path / "run"),
        "round_timeout_s": 60.0,
        "quorum_timeout_s": 0.3,
    }
    settings = RunSettings(**{**base, **kw})  # type: ignore[arg-type]
    settings.root.mkdir(parents=True, exist_ok=True)
    return settings


def _runner(settings: RunSettings) -> RoundRunner:
    x = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
    return RoundRunner(settings, make_strategy(settings), SPEC, b"", (x, np.zeros(16)))


def _initial() -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.normal(size=s).astype(np.float32) for s in SPEC.shapes()]


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_a_round_below_quorum_sends_nothing_and_keeps_the_arrays(tmp_path):
    settings = _settings(tmp_path)
    grid = ScriptedGrid({1: Client(step=1.0)})
    runner = _runner(settings)
    before = ArrayRecord(_initial())
    after = runner.run_round(grid, 1, before)
    assert _same(after.to_numpy_ndarrays(), _initial())
    (rec,) = runner.records
    assert (rec.status, rec.sampled, rec.replies) == ("skipped", 0, 0)
    assert rec.reason == "quorum not reached: 1 of 2 clients connected"
    assert grid.rounds == []  # no device was asked to train
    assert read_rounds(settings.rounds_path)[0]["reason"] == rec.reason


def test_too_few_replies_before_the_deadline_skip_the_round(tmp_path):
    settings = _settings(tmp_path, round_timeout_s=30.0)
    slow = Client(step=5.0, delay_s=45.0)
    grid = ScriptedGrid({1: Client(step=1.0), 2: slow, 3: Client(step=5.0, crash=True)})
    runner = _runner(settings)
    after = runner.run_round(grid, 1, ArrayRecord(_initial()))
    assert _same(after.to_numpy_ndarrays(), _initial())
    (rec,) = runner.records
    assert (rec.status, rec.sampled, rec.replies, rec.failures) == ("skipped", 3, 1, 2)
    assert rec.reason.startswith("quorum not reached: 1 of 2 replies before the 30 s deadline")
    assert "ClientApp crashed" in rec.reason
    assert runner.participants == set()


def test_a_straggler_past_the_deadline_is_left_out_and_the_others_aggregate(tmp_path):
    settings = _settings(tmp_path, round_timeout_s=30.0)
    # Node 3 is alive and would answer, but only after the deadline.
    grid = ScriptedGrid(
        {1: Client(step=1.0), 2: Client(step=3.0), 3: Client(step=100.0, delay_s=31.0)}
    )
    runner = _runner(settings)
    initial = _initial()
    after = runner.run_round(grid, 1, ArrayRecord(initial)).to_numpy_ndarrays()
    assert grid.rounds == [[1, 2, 3]]  # the straggler was asked...
    # ...and FedAvg of the two in time (equal examples): initial + (1 + 3) / 2.
    for got, start in zip(after, initial, strict=True):
        np.testing.assert_allclose(got, start + 2.0, rtol=0, atol=1e-5)
    (rec,) = runner.records
    assert (rec.status, rec.sampled, rec.replies, rec.failures) == ("aggregated", 3, 2, 1)
    assert rec.examples == 20
    assert rec.holdout["loss"] > 0
    assert runner.participants == {1, 2}


def test_a_skipped_round_after_an_aggregated_one_keeps_round_ones_weights(tmp_path):
    settings = _settings(tmp_path, rounds=2)
    grid = ScriptedGrid({1: Client(step=1.0), 2: Client(step=2.0)})
    grid.after_round = [{1}]  # node 2 leaves after round 1
    initial = _initial()
    final = _runner(settings).run(grid, initial)
    round_one = [w + np.float32(1.5) for w in initial]
    for got, want in zip(final, round_one, strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert not _same(final, initial)
    # What the hand-off reads: the saved result is round 1's model, and the log says why.
    assert _same(load_weights(settings.result_path), final)
    rounds = read_rounds(settings.rounds_path)
    assert [r["status"] for r in rounds] == ["aggregated", "skipped"]
    assert rounds[1]["reason"] == "quorum not reached: 1 of 2 clients connected"
    assert grid.rounds == [[1, 2]]
