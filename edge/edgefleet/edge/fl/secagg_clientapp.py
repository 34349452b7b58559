"""The SecAgg+ ClientApp: Flower's legacy ``client_fn`` app with ``secaggplus_mod``.

Flower 1.41's SecAgg+ runs only through its legacy API, so this app wraps a ``NumPyClient``
whose ``fit`` trains with LiteRT exactly like :mod:`edgefleet.edge.fl.clientapp` (same buffer,
policy and training). The mod masks and quantises the update: the server only ever sees the
sum. Like ``clientapp``, it runs in the SuperNode's process, never in the agent's.

A SecAgg+ round is four messages (setup, share keys, collect masked vectors, unmask); the
client trains in the third. Its progress note is written after its unmask reply is ready, so
an agent that stops its SuperNode after the last round's note has served the whole protocol.
A refused or failed training is noted at once: no unmask comes for it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Context, Message
from flwr.client import Client, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import NDArrays, Scalar
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

from edgefleet.edge.fl.clientapp import SIMULATED
from edgefleet.edge.fl.errors import FlError
from edgefleet.edge.fl.local import TrainTask, database_path, train_locally
from edgefleet.edge.fl.policy import SystemProbe, TrainingPolicy
from edgefleet.edge.fl.progress import RoundNote, append_note

# The note of a trained round waits in the node's context state until the unmask stage.
PENDING_NOTE = "edgefleet-pending-note"


def _status(context: Context) -> Path | None:
    status = context.node_config.get("status")
    return Path(str(status)) if status else None


def _round_note(config: dict[str, Scalar], **note: object) -> RoundNote:
    return RoundNote(
        round=int(config.get("server-round", 0)),
        rounds=int(config.get("rounds", 0)),
        **note,  # type: ignore[arg-type]
    )


class LiteRTClient(NumPyClient):
    """Trains the round's weights with LiteRT on this device's training buffer."""

    def __init__(self, context: Context) -> None:
        self.context = context

    def fit(
        self, parameters: NDArrays, config: dict[str, Scalar]
    ) -> tuple[NDArrays, int, dict[str, Scalar]]:
        """Train; a refusal or failure is noted now and raised (the client drops out)."""
        node = self.context.node_config
        task = TrainTask.from_config(config)
        db = database_path(node, config)
        # A virtual client of the simulation engine has no device to protect.
        policy = TrainingPolicy.from_node_config(node) if "db" in node else SIMULATED
        weights = [np.asarray(p, np.float32) for p in parameters]
        status = _status(self.context)
        try:
            new, metrics = train_locally(task, weights, db, policy, SystemProbe())
        except FlError as exc:
            if status is not None:
                refused = exc.reason in ("training-refused", "no-training-data")
                note = _round_note(
                    config, outcome="refused" if refused else "failed", reason=exc.reason
                )
                append_note(status, note)
            raise
        if status is not None:
            note = _round_note(
                config,
                outcome="trained",
                examples=int(metrics["num-examples"]),
                loss_before=metrics["loss-before"],
                loss_after=metrics["loss-after"],
            )
            self.context.state.config_records[PENDING_NOTE] = ConfigRecord({"note": note.to_json()})
        return list(new), int(metrics["num-examples"]), dict(metrics)


def note_after_unmask(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Write the round's pending note once this client's unmask reply is ready."""
    configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
    stage = configs.get(Key.STAGE) if configs is not None else None
    reply = call_next(msg, context)
    status = _status(context)
    pending = context.state.config_records.get(PENDING_NOTE)
    if stage == Stage.UNMASK and status is not None and pending is not None:
        append_note(status, RoundNote.from_json(json.loads(str(pending["note"]))))
        del context.state.config_records[PENDING_NOTE]
    return reply


def client_fn(context: Context) -> Client:
    """The client of one message."""
    return LiteRTClient(context).to_client()


app = ClientApp(client_fn=client_fn, mods=[note_after_unmask, secaggplus_mod])
