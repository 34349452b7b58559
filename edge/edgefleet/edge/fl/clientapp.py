"""The Flower ClientApp: the only module of the agent side that imports flwr.

The SuperNode runs it in its own process for every message (Flower 1.41 has no in-process
client), and Flower's simulation runs the same app for virtual clients. It trains with
LiteRT (:mod:`edgefleet.edge.fl.local`), never with TensorFlow, so a Ray worker importing it
stays small.

Local differential privacy: when the round's config carries ``dp-clipping-norm``,
``dp-sensitivity``, ``dp-epsilon`` and ``dp-delta`` (``--dp local``, the server decides the
values), Flower's ``LocalDpMod`` clips the update to that L2 norm and adds Gaussian noise
before the reply leaves. It is registered on the train handler only: on the whole app it
would also wrap evaluate messages, which carry no update (and loop, as seen with 1.41).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import LocalDpMod
from flwr.clientapp.typing import ClientAppCallable

from edgefleet.edge.fl.errors import FlConfigError, FlError
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


DP_KEYS = ("dp-clipping-norm", "dp-sensitivity", "dp-epsilon", "dp-delta")


def local_dp_from_config(config: Mapping[str, object]) -> LocalDpMod | None:
    """The ``LocalDpMod`` the round's config asks for, or None without local DP."""
    present = [k for k in DP_KEYS if k in config]
    if not present:
        return None
    if len(present) != len(DP_KEYS):
        raise FlConfigError(f"local DP needs all of {', '.join(DP_KEYS)}; got {present}")
    try:
        clip, sensitivity, epsilon, delta = (float(config[k]) for k in DP_KEYS)  # type: ignore[arg-type]
        return LocalDpMod(clip, sensitivity, epsilon, delta)
    except (TypeError, ValueError) as exc:
        raise FlConfigError(f"bad local DP settings from the server: {exc}") from None


def local_dp(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Clip and noise the reply's update when the round asks for local DP (a Flower mod)."""
    config = msg.content.config_records.get("config")
    mod = local_dp_from_config(dict(config) if config is not None else {})
    if mod is None:
        return call_next(msg, context)
    return mod(msg, context, call_next)


@app.train(mods=[local_dp])
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
