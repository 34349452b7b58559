"""Drive one federated run to its end and collect what it produced."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgefleet.cloud.fl.apps.rounds import Array, load_weights, read_rounds
from edgefleet.cloud.fl.errors import FlRunError, QuorumNotReached
from edgefleet.cloud.fl.settings import RunSettings
from edgefleet.cloud.fl.superlink.process import SuperLink


@dataclass(frozen=True, slots=True, eq=False)
class RunOutcome:
    """The rounds of a finished run, its final weights and how many clients took part."""

    settings: RunSettings
    rounds: list[dict[str, Any]]
    weights: list[Array]
    participants: int
    status: str = "finished:completed"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def aggregated(self) -> list[dict[str, Any]]:
        """The rounds that changed the model."""
        return [r for r in self.rounds if r["status"] == "aggregated"]


def collect(settings: RunSettings, status: str = "finished:completed") -> RunOutcome:
    """Read a finished run's directory; raise if the ServerApp left no result."""
    rounds = read_rounds(settings.rounds_path)
    if not settings.result_path.is_file():
        raise FlRunError(
            f"the run ended ({status}) without a result after {len(rounds)} round(s); "
            f"see {settings.root}"
        )
    summary = json.loads((settings.root / "summary.json").read_text())
    outcome = RunOutcome(
        settings, rounds, load_weights(settings.result_path), int(summary["participants"]), status
    )
    if not outcome.aggregated:
        reasons = "; ".join(sorted({r["reason"] for r in rounds}))
        raise QuorumNotReached(f"no round was aggregated, the model is unchanged: {reasons}")
    return outcome


def run_on_superlink(
    settings: RunSettings,
    link: SuperLink,
    *,
    timeout: float,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    check: Callable[[], None] | None = None,
) -> RunOutcome:
    """Submit the run, report each round as it lands, and check how the run ended.

    ``check`` is called at every poll; what it raises ends the run (the caller stops the
    SuperLink), e.g. once the devices that are left cannot make quorum.

    ``flwr run`` reports success even when the ServerApp crashed: the run's status from the
    Control API and the result file are what count here.
    """
    settings.write()
    settings.rounds_path.unlink(missing_ok=True)
    settings.result_path.unlink(missing_ok=True)
    seen = 0

    def poll(*, running: bool = True) -> None:
        nonlocal seen
        rounds = read_rounds(settings.rounds_path)
        for rec in rounds[seen:]:
            if on_round is not None:
                on_round(rec)
        seen = len(rounds)
        if running and check is not None:
            check()

    run_id = link.start_run(settings.settings_path)
    st = link.wait(run_id, timeout, poll=poll)
    poll(running=False)
    text = f"{st.status}:{st.sub_status}"
    if not st.ok:
        raise FlRunError(
            f"run {run_id} ended {text} {st.details}; see {link.log_path} and {settings.root}"
        )
    return collect(settings, text)
