"""The SecAgg+ ServerApp: reads the run's settings and runs Flower's SecAgg+ workflow."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from edgefleet.cloud.fl.secagg.settings import SecAggSettings
from edgefleet.cloud.fl.secagg.workflow import run_secagg_server
from edgefleet.cloud.fl.settings import RunSettings


def make_secagg_server_app(
    settings: RunSettings | None = None, secagg: SecAggSettings | None = None
) -> ServerApp:
    """A SecAgg+ ServerApp for ``settings``, or one reading them from the run config."""
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        chosen = settings or RunSettings.read(str(context.run_config["settings"]))  # type: ignore[arg-type]
        run_secagg_server(grid, context, chosen, secagg or SecAggSettings.read(chosen))

    return server


app = make_secagg_server_app()
