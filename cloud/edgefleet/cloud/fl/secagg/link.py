"""Runs with SecAgg+ on a SuperLink: the SecAgg+ apps in place of the plain ones."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgefleet.cloud.fl.apps.outcome import RunOutcome, run_on_superlink
from edgefleet.cloud.fl.secagg.settings import SecAggSettings
from edgefleet.cloud.fl.settings import RunSettings
from edgefleet.cloud.fl.superlink.process import APP_TOML, SuperLink

SERVER_APP = "edgefleet.cloud.fl.secagg.serverapp:app"
CLIENT_APP = "edgefleet.edge.fl.secagg_clientapp:app"
SECAGG_APP_TOML = APP_TOML.replace(
    '"edgefleet.cloud.fl.apps.serverapp:app"', f'"{SERVER_APP}"'
).replace('"edgefleet.edge.fl.clientapp:app"', f'"{CLIENT_APP}"')


class SecAggLink(SuperLink):
    """A SuperLink whose runs are the SecAgg+ apps (:data:`SECAGG_APP_TOML`)."""

    def start_run(self, settings_path: Path, *, app_toml: str = SECAGG_APP_TOML) -> int:
        """Submit the SecAgg+ app with ``settings_path`` as its run config."""
        return super().start_run(settings_path, app_toml=app_toml)


def run_secagg(
    settings: RunSettings,
    secagg: SecAggSettings,
    link: SecAggLink,
    *,
    timeout: float,
    on_round: Callable[[dict[str, Any]], None] | None = None,
) -> RunOutcome:
    """Like :func:`edgefleet.cloud.fl.apps.outcome.run_on_superlink`, with SecAgg+."""
    secagg.write(settings)
    return run_on_superlink(settings, link, timeout=timeout, on_round=on_round)
