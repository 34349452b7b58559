"""The Flower ServerApp of edgefleet: reads the run's settings file and runs the round loop."""

from __future__ import annotations

import json

import numpy as np
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from edgefleet.cloud.fl.apps.rounds import RoundRunner, load_weights
from edgefleet.cloud.fl.apps.strategies import make_strategy
from edgefleet.cloud.fl.settings import RunSettings
from edgefleet.models.trainable.spec import TrainableSpec


def run_server(grid: Grid, settings: RunSettings) -> None:
    """Load what the CLI prepared in the run's directory and run every round."""
    spec = TrainableSpec.from_json(json.loads(settings.spec_path.read_text()))
    with np.load(settings.holdout_path) as h:
        holdout = (np.asarray(h["x"], np.float32), np.asarray(h["y"]))
    runner = RoundRunner(
        settings,
        make_strategy(settings),
        spec,
        settings.trainable_path.read_bytes(),
        holdout,
    )
    runner.run(grid, load_weights(settings.initial_path))


def make_server_app(settings: RunSettings | None = None) -> ServerApp:
    """A ServerApp for ``settings``, or one reading ``settings`` from the run config."""
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        chosen = settings or RunSettings.read(str(context.run_config["settings"]))  # type: ignore[arg-type]
        run_server(grid, chosen)

    return server


app = make_server_app()
