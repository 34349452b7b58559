"""Run the same ServerApp and ClientApp in Flower's simulation engine (Ray) for many clients."""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from edgefleet.cloud.fl.apps.outcome import RunOutcome, collect
from edgefleet.cloud.fl.apps.rounds import read_rounds
from edgefleet.cloud.fl.errors import FlRunError
from edgefleet.cloud.fl.settings import RunSettings

# The ClientApp lives with the agent (edgefleet.edge.fl.clientapp). The cloud may not import
# the agent, so it names the app the way a Flower app's pyproject does, and Flower loads it.
CLIENT_APP = "edgefleet.edge.fl.clientapp:app"

# Virtual clients never straggle: the round deadline there only bounds a stuck engine, and the
# first round also waits for Ray to start its workers, which took 97 s on a 2-core machine
# under load (8 s idle) and once missed the default 120 s deadline of round 1.
ENGINE_START_ALLOWANCE_S = 600.0

log = logging.getLogger(__name__)


class RoundFeed:
    """Hand each new round of ``rounds.jsonl`` to ``on_round`` while the engine runs.

    ``run_simulation`` blocks until the last round and offers no per-round callback, but the
    round loop appends a line per round as it goes: a thread reads them every ``every_s``.
    """

    def __init__(
        self, path: Path, on_round: Callable[[dict[str, Any]], None], every_s: float = 0.5
    ) -> None:
        self.path = path
        self.on_round = on_round
        self.every_s = every_s
        self.seen = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fl-round-feed", daemon=True)

    def poll(self) -> None:
        """Report the rounds written since the last poll."""
        try:
            rounds = read_rounds(self.path)
        except ValueError:
            return  # a line caught half written: it is whole at the next poll
        for rec in rounds[self.seen :]:
            self.seen += 1
            self.on_round(rec)

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.poll()
            except Exception:  # a broken progress display must not end the simulation
                log.exception("reporting a simulated round failed")

    def __enter__(self) -> RoundFeed:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()


def simulate(
    settings: RunSettings,
    clients: int,
    *,
    cpus: int = 2,
    on_round: Callable[[dict[str, Any]], None] | None = None,
) -> RunOutcome:
    """Run ``settings`` with ``clients`` virtual SuperNodes; ``settings.data_dir`` holds their data.

    Each virtual client reads ``client-<partition-id>.db`` (see
    :func:`edgefleet.cloud.fl.apps.prepare.write_partitions`). The round deadline is extended by
    :data:`ENGINE_START_ALLOWANCE_S`: it is meant for devices, not for Ray's cold start.
    """
    from flwr.simulation import run_simulation
    from flwr.supercore.object_ref import load_app

    from edgefleet.cloud.fl.apps.serverapp import make_server_app

    if not settings.data_dir:
        raise FlRunError("a simulation needs settings.data_dir with the clients' data")
    settings = dataclasses.replace(
        settings, round_timeout_s=settings.round_timeout_s + ENGINE_START_ALLOWANCE_S
    )
    settings.write()
    settings.rounds_path.unlink(missing_ok=True)
    settings.result_path.unlink(missing_ok=True)
    client_app = load_app(CLIENT_APP, FlRunError)
    server_app = make_server_app(settings)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    backend = {
        "init_args": {"num_cpus": cpus, "include_dashboard": False, "log_to_driver": False},
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
    }
    # Flower's Ray backend sets PYTHONPATH to this process's whole sys.path and leaves it
    # set: every child process started later (SuperNodes, agents, venvs) would inherit it.
    pythonpath = os.environ.get("PYTHONPATH")
    try:
        with RoundFeed(settings.rounds_path, on_round or (lambda rec: None)):
            run_simulation(
                num_supernodes=clients,
                client_app=client_app,
                server_app=server_app,
                backend_config=backend,  # type: ignore[arg-type]
            )
    finally:
        if pythonpath is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = pythonpath
    return collect(settings)
