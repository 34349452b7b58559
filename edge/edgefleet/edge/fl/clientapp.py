"""The Flower ClientApp: the only module of the agent side that imports flwr.

The SuperNode runs it in its own process for every message (Flower 1.41 has no in-process
client), and Flower's simulation runs the same app for virtual clients. It trains with
LiteRT (:mod:`edgefleet.edge.fl.local`), never with TensorFlow, so a Ray worker importing it
stays small.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from edgefleet.edge.fl.errors import FlError
from edgefleet.edge.fl.local import (
    TrainTask,
    database_path,
    evaluate_locally,
    train_locally,
)
from edgefleet.edge.fl.policy import SystemProbe, TrainingPolicy
from edgefleet.edge.fl.progress import RoundNote, append_note
from edgefleet.edge.fl.trainer import Array

app = ClientApp()
SIMULATED = TrainingPolicy(max_cpu_percent=0.0, max_temperature_c=0.0, yield_to_inference=False)


def _task(msg: Message, context: Context) -> tuple[TrainTask, list[Array], Path]:
    config = dict(msg.content.config_records["config"])
    weights = msg.content.array_records["arrays"].to_numpy_ndarrays()
    db = database_path(context.node_config, config)
    return TrainTask.from_config(config), weights, db


def _note(context: Context, msg: Message, note: dict[str, object]) -> None:
    """Tell the agent (through its status file) what this round did here."""
    status = context.node_config.get("status")
    if not status:
        return
    config = msg.content.config_records["config"]
    append_note(
        Path(str(status)),
        RoundNote(
            round=int(config.get("server-round", 0)),  # type: ignore[arg-type]
            rounds=int(config.get("rounds", 0)),  # type: ignore[arg-type]
            **note,  # type: ignore[arg-type]
        ),
    )


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received weights on this device's buffer; errors become error replies."""
    task, weights, db = _task(msg, context)
    policy = TrainingPolicy.from_node_config(context.node_config)
    if "db" not in context.node_config:
        # A virtual client of the simulation engine: there is no device to protect.
        policy = SIMULATED
    try:
        new, metrics = train_locally(task, weights, db, policy, SystemProbe())
    except FlError as exc:
        outcome = "refused" if exc.reason in ("training-refused", "no-training-data") else "failed"
        _note(context, msg, {"outcome": outcome, "reason": exc.reason})
        raise
    _note(
        context,
        msg,
        {
            "outcome": "trained",
            "examples": int(metrics["num-examples"]),
            "loss_before": metrics["loss-before"],
            "loss_after": metrics["loss-after"],
        },
    )
    content = RecordDict({"arrays": ArrayRecord(new), "metrics": MetricRecord(dict(metrics))})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Loss of the received weights on this device's buffer."""
    task, weights, db = _task(msg, context)
    metrics = evaluate_locally(task, weights, db)
    return Message(content=RecordDict({"metrics": MetricRecord(dict(metrics))}), reply_to=msg)
