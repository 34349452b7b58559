"""Federated runs started from the cloud: SuperLink, ``start-training`` to devices, hand-off.

``POST /v1/fl/runs`` lands here. A run picks its devices (named ones, or every online device
serving the model), starts a SuperLink, sends each device a ``StartTraining`` command through
the cloud's command publisher, drives the rounds (quorum, deadline), publishes every round as
an ``fl_round`` event, and registers the result as a signed bundle with lineage (and, if
asked, assigns it back to the devices that trained). Each run runs on its own thread; Flower
and TensorFlow are imported there, never when the cloud starts.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefleet.cloud.assignments import Assigner
from edgefleet.cloud.errors import NoTargets, NotFound
from edgefleet.cloud.fl.errors import FlSettingsError, QuorumUnreachable
from edgefleet.cloud.fl.runs.journal import RunJournal
from edgefleet.cloud.fl.runs.run import FlRun, FlRunRequest
from edgefleet.cloud.fl.runs.schedule import SCHEDULE_FILE, FlSchedule, FlScheduler, load_schedule
from edgefleet.cloud.node import CloudNode
from edgefleet.cloud.publisher import CommandPublisher
from edgefleet.cloud.registry import ModelRegistry
from edgefleet.cloud.store.base import TelemetryStore
from edgefleet.protocol import topics
from edgefleet.protocol.errors import EdgefleetError
from edgefleet.protocol.messages import StartTraining

log = logging.getLogger(__name__)
COMMAND = "start-training"
# A device that refused or whose session failed will not train in this run.
LOST = ("refused", "failed")
# Once quorum is out of reach, how long the devices still silent get to say why too.
ANSWER_GRACE_S = 3.0


@dataclass(frozen=True, slots=True)
class FlServiceSettings:
    """Where runs live and how devices reach their SuperLink.

    ``public_address`` is what devices dial (default ``host:port``); ``port = 0`` takes a free
    port per run. Without ``signing_key`` the result is kept in the run directory but not
    registered (registering needs a key the fleet trusts). ``schedule``: runs started every
    N minutes while enough devices are online (:mod:`edgefleet.cloud.fl.runs.schedule`).
    """

    workdir: Path
    host: str = "127.0.0.1"
    port: int = 0
    public_address: str | None = None
    signing_key: Path | None = None
    margin: float = 0.02
    # Runs the cloud starts by itself, besides those in <workdir>/schedule.toml (schedule.py).
    schedule: tuple[FlSchedule, ...] = ()


class FlService:
    """Starts federated runs in the background and keeps their records (``run.json``)."""

    def __init__(
        self,
        settings: FlServiceSettings,
        store: TelemetryStore,
        registry: ModelRegistry,
        publisher: CommandPublisher | None,
        node: CloudNode,
        *,
        assigner: Assigner | None = None,
        fleet: str | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.registry = registry
        self.publisher = publisher
        self.node = node
        self.assigner = assigner
        self.fleet = fleet
        self.journal = RunJournal(settings.workdir)
        # Runs of earlier cloud processes: readable, never resumed (see journal.py).
        self._runs: dict[str, FlRun] = {run.id: run for run in self.journal.load()}
        self._threads: dict[str, threading.Thread] = {}
        self._links: dict[str, Any] = {}
        self._lock = threading.Lock()
        schedule = settings.schedule + load_schedule(settings.workdir / SCHEDULE_FILE)
        self.scheduler = FlScheduler(self, schedule).start() if schedule else None

    # ------------------------------------------------------------------ API

    def models(self) -> set[str]:
        """Models that have had runs here (the dashboard's round source reads these too)."""
        with self._lock:
            return {r.request.model for r in self._runs.values()}

    def targets(self, req: FlRunRequest) -> list[tuple[str, str]]:
        """``(device, fleet)`` to train: the named ones, or every online device of the model."""
        devices = self.store.devices(fleet=self.fleet)
        if req.devices:
            known = {d.device_id: d for d in devices}
            unknown = sorted(set(req.devices) - set(known))
            if unknown:
                raise NoTargets(f"unknown device(s): {', '.join(unknown)} (none has connected)")
            chosen = [known[d] for d in sorted(set(req.devices))]
        else:
            chosen = [d for d in devices if d.online and d.model == req.model]
        if len(chosen) < req.min_clients:
            raise NoTargets(
                f"{len(chosen)} device(s) can train {req.model}, the run needs {req.min_clients} "
                "(min_clients); name devices or wait for more to come online",
                reason="too-few-devices",
            )
        return [(d.device_id, d.fleet) for d in chosen]

    def start(self, req: FlRunRequest) -> FlRun:
        """Check the request, pick the devices, and run it on a thread; returns at once."""
        if req.register and self.settings.signing_key is None:
            raise FlSettingsError(
                "this cloud has no signing key for federated results; start it with "
                "--fl-signing-key, or ask for register = false"
            )
        if self.publisher is None:
            raise NoTargets("this cloud runs without a broker connection", reason="no-broker")
        from edgefleet.models.zoo import get_model

        try:
            get_model(req.model)  # an unknown model fails now, with the zoo's message
        except EdgefleetError as exc:
            raise FlSettingsError(str(exc), reason="unknown-model") from None
        if req.from_version is not None:
            from edgefleet.cloud.fl.runs.origin import choose_version

            choose_version(self.store.models(req.model), req.model, req.from_version)
        targets = self.targets(req)
        run = FlRun(f"fl-{secrets.token_hex(6)}", req, [d for d, _ in targets])
        thread = threading.Thread(
            target=self._run, args=(run, targets), name=f"fl-{run.id}", daemon=True
        )
        with self._lock:
            self._runs[run.id] = run
            self._threads[run.id] = thread
        self._save(run)
        thread.start()
        return run

    def get(self, run_id: str) -> FlRun:
        """One run."""
        with self._lock:
            run = self._runs.get(run_id)
        if run is None:
            raise NotFound(f"no federated run {run_id}")
        return run

    def runs(self) -> list[FlRun]:
        """Every run this cloud knows (its own and earlier processes'), newest first."""
        with self._lock:
            return sorted(self._runs.values(), key=lambda r: r.created_at, reverse=True)

    def acks(self, run: FlRun) -> dict[str, dict[str, Any]]:
        """Each device's newest ack of the run's ``start-training`` command."""
        out: dict[str, dict[str, Any]] = {}
        for device in run.devices:
            rows = self.store.records("command_acks", device_id=device, limit=200)
            mine = [r for r in rows if r.get("command_id") == run.id]
            if mine:
                final = [r for r in mine if r.get("status") != "received"] or mine
                newest = max(final, key=lambda r: r.get("t") or 0.0)
                out[device] = {k: newest.get(k) for k in ("status", "reason", "detail", "data")}
        return out

    def wait(self, run_id: str, timeout: float) -> FlRun:
        """Block until the run is done (tests and the CLI)."""
        with self._lock:
            thread = self._threads.get(run_id)
        if thread is not None:
            thread.join(timeout)
        return self.get(run_id)

    def close(self) -> None:
        """Stop the schedule and every SuperLink still running (their runs fail)."""
        if self.scheduler is not None:
            self.scheduler.stop()
        with self._lock:
            links = list(self._links.values())
        for link in links:
            link.stop()

    # ------------------------------------------------------------------ the run

    def _run(self, run: FlRun, targets: list[tuple[str, str]]) -> None:
        try:
            self._drive(run, targets)
            run.state = "finished"
        except EdgefleetError as exc:
            log.warning("federated run %s failed: %s", run.id, exc)
            run.error, run.reason, run.state = str(exc), exc.reason, "failed"
        except Exception as exc:  # a thread must report, not vanish
            log.exception("federated run %s crashed", run.id)
            run.error, run.reason, run.state = f"{type(exc).__name__}: {exc}", "internal", "failed"
        finally:
            run.finished_at = time.time()
            self._note_acks(run)
            self._save(run)

    def _note_acks(self, run: FlRun) -> bool:
        """Copy the devices' newest acks into the run's record; whether they changed."""
        try:
            acks = self.acks(run)
        except EdgefleetError as exc:  # the store failing must not fail the run's record
            log.warning("cannot read the acks of federated run %s: %s", run.id, exc)
            return False
        merged = {**run.acks, **acks}
        if merged == run.acks:
            return False
        run.acks = merged
        return True

    def _quorum_watch(self, run: FlRun, on_round: Any) -> Any:
        """A check for each poll of the run: fail it once its devices cannot make quorum.

        ``refused + failed > selected - min_clients`` means no round can gather
        ``min_clients`` replies any more: waiting out the quorum timeout would change
        nothing. After a round was aggregated the run goes on (its result is worth
        registering); the rounds left are skipped by the ServerApp as before.
        """
        req = run.request
        spare = len(run.devices) - req.min_clients
        hopeless_since: float | None = None

        def check() -> None:
            nonlocal hopeless_since
            if self._note_acks(run):
                self._save(run)
            if any(r.get("status") == "aggregated" for r in run.rounds):
                return
            lost = {d: a for d, a in run.acks.items() if a.get("status") in LOST}
            if len(lost) <= spare:
                return
            now = time.monotonic()
            hopeless_since = now if hopeless_since is None else hopeless_since
            silent = [d for d in run.devices if d not in lost and d not in run.acks]
            if silent and now - hopeless_since < ANSWER_GRACE_S:
                return
            why = "; ".join(_answer(d, run.acks.get(d)) for d in run.devices)
            message = (
                f"quorum cannot be reached: {len(lost)} of {len(run.devices)} device(s) "
                f"refused or failed and the run needs {req.min_clients} (min_clients): {why}"
            )
            if len(run.rounds) < req.rounds:  # the round it waited for, as the dashboard shows it
                on_round(
                    {
                        "round": len(run.rounds) + 1,
                        "status": "skipped",
                        "reason": message,
                        "connected": 0,
                        "sampled": 0,
                        "replies": 0,
                        "failures": len(lost),
                        "examples": 0,
                        "client_loss_before": None,
                        "client_loss_after": None,
                        "holdout": {},
                        "train_seconds_max": 0.0,
                        "seconds": 0.0,
                        "at": time.time(),
                    }
                )
            raise QuorumUnreachable(message)

        return check

    def _save(self, run: FlRun) -> None:
        """Write the run's record; a full disk must not kill the run, only its record."""
        try:
            self.journal.save(run)
        except (OSError, ValueError) as exc:
            log.error("cannot write the record of federated run %s: %s", run.id, exc)

    def _drive(self, run: FlRun, targets: list[tuple[str, str]]) -> None:
        from edgefleet.cloud.fl.apps.outcome import run_on_superlink
        from edgefleet.cloud.fl.apps.prepare import prepare_run
        from edgefleet.cloud.fl.runs.origin import start_point
        from edgefleet.cloud.fl.runs.publish import publish_round
        from edgefleet.cloud.fl.superlink.process import SuperLink

        req, cfg = run.request, self.settings
        root = cfg.workdir / run.id
        start = start_point(req.model, self.registry, self.store, req.from_version)
        settings = req.run_settings(root / "run", start.parent)
        prepared = prepare_run(settings, start.weights)
        run.start = {**start.to_json(), "holdout": prepared.holdout()}
        link = SuperLink(root / "superlink", host=cfg.host, port=cfg.port).start()
        with self._lock:
            self._links[run.id] = link
        try:
            run.superlink = cfg.public_address or link.address
            run.state = "running"
            self._save(run)
            self._invite(run, targets)

            def on_round(rec: dict[str, Any]) -> None:
                run.rounds.append(rec)
                self._save(run)
                publish_round(self.store, req.model, run.id, rec)

            timeout = req.quorum_timeout_s + req.rounds * (req.round_timeout_s + 60) + 120
            outcome = run_on_superlink(
                settings, link, timeout=timeout, on_round=on_round,
                check=self._quorum_watch(run, on_round),
            )  # fmt: skip
        finally:
            link.stop()
            with self._lock:
                self._links.pop(run.id, None)
        if req.register:
            run.state = "registering"
            self._save(run)
            self._register(run, outcome, root)
        if req.assign and run.registered and not run.rejected:
            run.state = "assigning"
            self._save(run)
            assert self.assigner is not None
            assignment = self.assigner.assign(
                run.registered, "list" if len(run.devices) > 1 else "device", run.devices,
                fleet=self.fleet,
            )  # fmt: skip
            run.assignment = assignment.id

    def _invite(self, run: FlRun, targets: list[tuple[str, str]]) -> None:
        """Send each device its ``StartTraining`` (command id = run id)."""
        assert self.publisher is not None
        req = run.request
        for device, fleet in targets:
            cmd = StartTraining(
                device_id=self.node.node_id,
                boot_id=self.node.boot_id,
                seq=self.node.next_seq(),
                sent_at=time.time(),
                command_id=run.id,
                model=req.model,
                superlink=run.superlink,
                run_id=run.id,
                rounds=req.rounds,
                deadline_s=req.device_deadline(),
            )
            self.publisher.publish(topics.command(fleet, device, COMMAND), cmd)

    def _register(self, run: FlRun, outcome: Any, root: Path) -> None:
        from edgefleet.cloud.fl.runs.handoff import hand_off
        from edgefleet.protocol.signing import load_private_key

        assert self.settings.signing_key is not None
        key = load_private_key(self.settings.signing_key)
        margin = run.request.margin if run.request.margin is not None else self.settings.margin
        result = hand_off(
            outcome, self.registry, self.store, key, margin=margin, out_dir=root / "bundle"
        )
        run.registered = result.version.ref
        run.rejected = result.rejected
        run.metric = {
            result.metric: result.value,
            f"baseline_{result.metric}": result.baseline,
        }


def _answer(device: str, ack: dict[str, Any] | None) -> str:
    """``device refused (reason: detail)`` for a failure message; ``no answer`` when silent."""
    if not ack:
        return f"{device}: no answer"
    status, reason, detail = ack.get("status"), ack.get("reason"), ack.get("detail")
    said = ": ".join(str(x) for x in (reason, detail) if x)
    return f"{device} {status}" + (f" ({said})" if said else "")
