"""``edgefleet demo``: the whole system on this machine, with no set-up, in a few minutes.

Starts a broker (embedded by default) and the cloud with SQLite in a work directory, builds
and signs the reference models (cached), runs simulated devices (real agents: inference and
telemetry, one emulated microcontroller on a pseudo-terminal per ten devices, at least one),
drifts one group, crashes a device, and checks every invariant. Writes ``report.json``; exits
6 if an invariant fails.

The learning step is a real federated round: three more real agents of the vibration model
(``trainer-0..2``, in this process, ``[fl] mode = "on-demand"``) buffer their own inputs; the
cloud's ``POST /v1/fl/runs`` starts a SuperLink and sends them ``start-training``, each agent
runs its own ``flower-supernode`` (~200 MB, ~10 s of round overhead, hence three and one
round). The run fine-tunes the version the fleet runs (1.0.0: its bundle carries the float
weights), and the result is registered as a signed bundle with lineage, judged on the cloud's
holdout against 1.0.0 with the normal rejection margin. Accepted, it is assigned to every
device of the model halfway through the run; rejected, it stays registered (marked rejected)
and the fleet keeps 1.0.0, and the demo says so. The round runs before the fleet streams, so
even a short run gets its assignment answered.

The federated round is the demo's headline: where Flower is not installed or the round fails,
the invariant "federated round registered a model" fails with the reason and the demo exits 6.
The rest still runs, on a centrally re-trained bundle, so the rollout path is still shown, but
a fallback never passes for the real thing. The assignment of the learned version is an
invariant too: every device of the model must take it (``succeeded``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import shutil
import threading
import time
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Final
from urllib.parse import urlparse

import msgspec
import typer
from rich.console import Console
from rich.markup import escape

from edgefleet.cloud.store.base import Assignment
from edgefleet.edge.agent import Agent
from edgefleet.edge.config import AgentConfig
from edgefleet.simulators.cloudview import CloudView
from edgefleet.simulators.errors import InvariantViolation, SimulationError
from edgefleet.simulators.fleet import SimOptions, Simulation, absolute, parse_broker
from edgefleet.simulators.invariants import Invariant
from edgefleet.simulators.live import make_console, status
from edgefleet.simulators.scenario import Crash, DriftOnset, Group, Scenario

MODEL: Final = "vibration-anomaly"
NEW_VERSION = "1.1.0"
TRAINERS = 3
FL_ROUNDS = 1
FL_TIMEOUT_S = 90.0
ROUND_ROW = "federated round registered a model"
ASSIGN_ROW = "the learned version reached every device of its model"


def demo_scenario(duration: float, devices: int = 20) -> Scenario:
    """Pumps (anomaly model, one in ten on an emulated MCU) and wearables (activity model)."""
    events: list[DriftOnset | Crash] = [
        DriftOnset(at=round(duration * 0.3, 1), group="pumps", drift="mode", magnitude=1.5)
    ]
    if duration >= 20:
        events.append(Crash(at=round(duration * 0.2, 1), group="wearables", restart_after=3.0))
    return Scenario(
        name="demo",
        seed=1,
        fleet="demo",
        groups=[
            Group(name="pumps", share=0.45, model=MODEL, tags=["site-a"]),
            # At least one, so a small demo shows the serial bridge too.
            Group(
                name="bench",
                count=max(1, round(devices * 0.1)),
                model=MODEL,
                source="serial",
                tags=["site-a"],
            ),
            Group(name="wearables", model="activity", tags=["site-b"]),
        ],
        events=events,  # type: ignore[arg-type]
    )


def learning_reason() -> str | None:
    """Why the federated round cannot run in this demo, or None when it can."""
    try:
        from edgefleet.cloud.fl.superlink import process  # noqa: F401 - probe only
        from edgefleet.edge.fl import supervisor  # noqa: F401 - probe only
    except ImportError as exc:
        return f"federated learning is not installed (missing {exc.name})"
    from edgefleet.edge.fl.config import FlConfig
    from edgefleet.edge.fl.errors import FlConfigError

    try:
        FlConfig(enabled=True).executable()
    except FlConfigError as exc:
        return str(exc)
    return None


class Trainers:
    """Real agents of the vibration model that train on demand, on one loop in a thread.

    They are not devices of the simulation (whose accounting the invariants check): they join
    the same fleet, broker and cloud, and answer the same commands.
    """

    def __init__(self, sim: Simulation, count: int = TRAINERS) -> None:
        url = urlparse(sim.broker_url)
        fleet = sim.plan.scenario.fleet
        bundle = sim.bundle_dirs[MODEL]
        self.ids = [f"trainer-{i}" for i in range(count)]
        self.configs = [
            _trainer_config(
                device, fleet, data_dir=sim.workdir / "trainers" / device,
                host=url.hostname or "127.0.0.1", port=url.port or 1883, bundle=bundle,
                public_key=sim.bundles.public_key, seed=900 + i,
                command_key=sim.command_pub(),
            )
            for i, device in enumerate(self.ids)
        ]  # fmt: skip
        shutil.rmtree(sim.workdir / "trainers", ignore_errors=True)  # a fresh run, fresh devices
        self.agents: list[Agent] = []
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name="demo-trainers", daemon=True)
        self._ready = threading.Event()
        self.error: BaseException | None = None

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._run())
        except BaseException as exc:  # reported by start()
            self.error = exc
            self._ready.set()
        finally:
            self.loop.close()

    async def _run(self) -> None:
        self.agents = [Agent(cfg) for cfg in self.configs]
        tasks = [asyncio.ensure_future(a.run()) for a in self.agents]
        await asyncio.gather(*(a.ready.wait() for a in self.agents))
        self._ready.set()
        await asyncio.gather(*tasks)

    def start(self, timeout: float = 60.0) -> Trainers:
        """Start the agents; return once each serves its model."""
        self._thread.start()
        if not self._ready.wait(timeout) or self.error is not None:
            raise SimulationError(f"the trainer agents did not start: {self.error}")
        return self

    def buffered(self) -> int:
        """The fewest training samples any trainer holds (read beside the agents, read-only)."""
        from edgefleet.edge.fl.buffer import TrainingBuffer
        from edgefleet.edge.fl.errors import NoTrainingData
        from edgefleet.models.vibration_anomaly import CHANNELS, WINDOW

        counts = []
        for cfg in self.configs:
            try:
                counts.append(
                    len(TrainingBuffer(cfg.outbox_path).load(MODEL, WINDOW * len(CHANNELS)))
                )
            except NoTrainingData:
                counts.append(0)
        return min(counts, default=0)

    def stop(self) -> None:
        """Clean shutdown of every trainer (their SuperNodes stop with them)."""
        if not self._thread.is_alive():
            return
        for a in self.agents:
            self.loop.call_soon_threadsafe(a.stop)
        self._thread.join(60)


def _trainer_config(
    device: str,
    fleet: str,
    *,
    data_dir: Path,
    host: str,
    port: int,
    bundle: Path,
    public_key: Path,
    seed: int,
    command_key: Path,
) -> AgentConfig:
    raw: dict[str, Any] = {
        "device": {"id": device, "fleet": fleet, "data_dir": str(data_dir)},
        "mqtt": {"host": host, "port": port, "reconnect_max_s": 2.0, "keepalive_s": 10},
        "source": {"kind": "simulated", "signal": "vibration", "seed": seed, "chunk": 40},
        "model": {"bundle": str(bundle), "trusted_keys": [str(public_key)]},
        "trust": {"command_keys": [str(command_key)]},
        "outbox": {"synchronous": "normal"},
        "health": {"interval_s": 5.0},
        "drift": {"every_windows": 200},
        "fl": {
            "enabled": True,
            "mode": "on-demand",
            # The demo's machine is busy by design (a whole fleet on two cores): no CPU limit.
            "max_cpu_percent": 0.0,
            "sample_every_windows": 2,
            "min_samples": 32,
            "end_grace_s": 15.0,
        },
    }
    return msgspec.convert(raw, AgentConfig)


@dataclasses.dataclass
class Learned:
    """What the learning step produced: the bundle to assign, how it came to be, what failed."""

    ref: str | None = None
    how: str = ""
    trainers: Trainers | None = None
    # The federated round's own result: the version it registered, or why it failed.
    registered: str | None = None
    round_error: str | None = None
    # The step that stands in for a failed round, and the assignment of whatever was learned.
    retrain_error: str | None = None
    assignment_id: str | None = None
    assign_error: str | None = None
    targets: int = 0

    def checks(self, view: CloudView) -> list[Invariant]:
        """The learning step's invariants, read from the cloud at the end of the run."""
        return learning_checks(self, view.assignments())


def learning_checks(learned: Learned, assignments: list[Assignment]) -> list[Invariant]:
    """Did the federated round register a model, and did every target take the learned one."""
    if learned.round_error is None and learned.registered is not None:
        fl = Invariant(ROUND_ROW, True, learned.how)
    else:
        why = learned.round_error or "the round never ran"
        instead = f"; the demo went on with {learned.ref} ({learned.how})" if learned.ref else ""
        fl = Invariant(ROUND_ROW, False, f"{why}{instead}")
    return [fl, _assignment_check(learned, assignments)]


def _assignment_check(learned: Learned, assignments: list[Assignment]) -> Invariant:
    if learned.retrain_error is not None:
        return Invariant(ASSIGN_ROW, False, f"no version to assign: {learned.retrain_error}")
    if learned.ref is None:
        # A version the gate rejected stays off the fleet by design: nothing failed.
        ok = learned.registered is not None
        return Invariant(ASSIGN_ROW, ok, f"nothing to assign: {learned.how or 'no version'}")
    if learned.assign_error is not None:
        return Invariant(
            ASSIGN_ROW, False, f"assigning {learned.ref} failed: {learned.assign_error}"
        )
    if learned.assignment_id is None:
        return Invariant(
            ASSIGN_ROW, False, f"{learned.ref} was never assigned (the run ended first)"
        )
    found = [a for a in assignments if a.id == learned.assignment_id]
    if not found:
        return Invariant(
            ASSIGN_ROW, False, f"assignment {learned.assignment_id} is not in the cloud's store"
        )
    a = found[0]
    counts = ", ".join(f"{n} {state}" for state, n in sorted(a.counts().items()))
    bad = [
        f"{t.device_id} {t.state}: {t.reason or 'no reason'}"
        for t in a.targets
        if t.state != "succeeded"
    ]
    detail = f"{learned.ref} to {len(a.targets)} devices: {counts}"
    if bad:
        detail += "; " + "; ".join(bad[:10])
    return Invariant(ASSIGN_ROW, not bad and len(a.targets) == learned.targets, detail)


def federated_round(
    sim: Simulation, console: Console, learned: Learned, timeout: float = FL_TIMEOUT_S
) -> None:
    """Train one federated round on the trainer agents and register the result."""
    cloud = sim.cloud
    assert cloud is not None
    assert cloud.fl is not None
    cloud.fl.settings = dataclasses.replace(cloud.fl.settings, signing_key=sim.bundles.private_key)
    client = sim.client()
    v1 = sim.bundles.cached(MODEL)
    if v1 is not None:
        # The version the fleet runs: the run fine-tunes its float weights and is judged by it.
        client.push(v1.archive.read_bytes())
    with status(console, escape("federated learning: starting 3 trainer agents (on-demand [fl])")):
        trainers = learned.trainers = Trainers(sim).start()
        deadline = time.monotonic() + 60
        while trainers.buffered() < 64 or not _online(client, trainers.ids):
            if time.monotonic() > deadline:
                raise SimulationError("the trainer agents buffered no training data in 60 s")
            time.sleep(0.5)
    run = client.request(
        "POST",
        "/v1/fl/runs",
        json_body={
            "model": MODEL,
            "rounds": FL_ROUNDS,
            "min_clients": TRAINERS,
            "devices": trainers.ids,
            # Fine-tuning a trained model: a few gentle local epochs (30 epochs at lr 0.1 fit
            # the three trainers' own windows and lose ROC AUC on the holdout's unseen devices).
            "epochs": 3,
            "lr": 0.05,
            "max_samples": 300,
            "round_timeout_s": timeout,
            "quorum_timeout_s": timeout,
            "from_version": v1.version if v1 is not None else None,
            # The cloud's normal rejection margin (0.02): no exemption for the demo.
        },
    )
    console.print(
        f"federated learning: run {run['id']} (POST /v1/fl/runs): a SuperLink, then "
        f"start-training to {', '.join(trainers.ids)}"
    )
    state = run
    with status(console, "federated learning: SuperNodes train on their own buffers") as progress:
        deadline = time.monotonic() + 300
        while state["state"] not in ("finished", "failed"):
            if time.monotonic() > deadline:
                raise SimulationError(f"the federated run {run['id']} did not end in 300 s")
            time.sleep(1.0)
            state = client.request("GET", f"/v1/fl/runs/{run['id']}")
            progress.update(
                f"federated learning: {state['state']}, {len(state['rounds'])} round(s)"
            )
    if state["state"] != "finished":
        raise SimulationError(f"federated run failed: {state['reason']}: {state['error']}")
    console.print(f"  SuperLink {state['superlink']}; each trainer ran its own flower-supernode")
    start = state.get("start") or {}
    start_hold = ", ".join(f"{k} {v:.4f}" for k, v in (start.get("holdout") or {}).items())
    console.print(f"  start: {start.get('note', '?')}; holdout {start_hold}")
    for rec in state["rounds"]:
        hold = ", ".join(f"{k} {v:.4f}" for k, v in rec.get("holdout", {}).items())
        console.print(
            f"  round {rec['round']}: {rec['status']} with {rec['replies']} devices, client loss "
            f"{rec['client_loss_before']:.4f} -> {rec['client_loss_after']:.4f}; holdout {hold}"
        )
    learned.how = f"federated round: {len(state['rounds'])} round(s) on {TRAINERS} trainer agents"
    learned.how += ", " + verdict(state)
    learned.registered = state["registered"]
    learned.ref = None if state["rejected"] else state["registered"]
    console.print(f"federated learning: {learned.how}")


def verdict(state: dict[str, Any]) -> str:
    """The hand-off's verdict in words: the new version's metric against its parent's."""
    ref, start = state["registered"], state.get("start") or {}
    parent = start.get("from") or "no earlier version"
    metric = next((k for k in state["metric"] if not k.startswith("baseline_")), None)
    if metric is None:
        return f"registered {ref}"
    value, base = state["metric"][metric], state["metric"].get(f"baseline_{metric}")
    versus = f" vs {base:.4f} for {parent}" if base is not None else ""
    if state["rejected"]:
        return (
            f"registered {ref} REJECTED ({metric} {value:.4f}{versus}, worse by more than the "
            f"margin): not assigned, the fleet keeps {parent}"
        )
    if base is not None and value < base:
        # Honest about a loss the margin tolerates: accepted is not the same as better.
        return (
            f"registered {ref} accepted ({metric} {value:.4f}{versus}: {base - value:.4f} "
            f"below it, inside the rejection margin)"
        )
    return f"registered {ref} accepted ({metric} {value:.4f}{versus})"


def _online(client: Any, ids: list[str]) -> bool:
    states = {d["device_id"]: d for d in client.devices()}
    return all(i in states and states[i]["online"] for i in ids)


def central_fallback(sim: Simulation, learned: Learned, reason: str) -> None:
    """No federated round: re-train centrally so the rollout path still runs (the demo fails)."""
    sim.notes.append(
        f"federated round FAILED: {reason}; a centrally re-trained bundle stands in for the "
        "rollout (the demo fails)"
    )
    bundle = sim.bundles.ensure(MODEL, NEW_VERSION, seed=1, parent=f"{MODEL}@1.0.0")
    with contextlib.suppress(Exception):  # already pushed by an earlier run of the cache
        sim.client().push(bundle.archive.read_bytes())
    learned.ref = f"{MODEL}@{NEW_VERSION}"
    learned.how = f"re-trained centrally (seed 1) as {learned.ref}"


def learning_step(learned: Learned, sim: Simulation) -> None:
    """Assign the learned bundle to every device of the model (the fleet's and the trainers)."""
    if learned.ref is None:
        sim.say(learned.how or "no new model version to assign")
        return
    sim.say(learned.how)
    client = sim.client()
    targets = [*sim.plan.groups.get("pumps", ()), *sim.plan.groups.get("bench", ())]
    if learned.trainers is not None:
        targets += learned.trainers.ids
    learned.targets = len(targets)
    if not targets:
        learned.assign_error = "no device runs the model"
        sim.say("no device runs the model: nothing to assign")
        return
    try:
        answer = client.assign(learned.ref, devices=targets)
    except Exception as exc:  # an invariant row says it; the background runner notes it
        learned.assign_error = f"{type(exc).__name__}: {exc}"
        raise
    learned.assignment_id = str(answer.get("id"))
    sim.say(f"assigned {learned.ref} to {len(targets)} devices")
    sim.notes.append(f"assignment {answer.get('id')}: {learned.ref} -> {len(targets)}")


app = typer.Typer(add_completion=False)


@app.command()
def demo(  # noqa: PLR0917 - typer maps each parameter to an option
    devices: Annotated[
        int, typer.Option(min=3, max=2000, help="Simulated devices (one per group at least).")
    ] = 20,
    duration: Annotated[float, typer.Option(min=10, help="Seconds of streaming.")] = 120.0,
    broker: Annotated[
        str, typer.Option(help="embedded, mosquitto, or mqtt://HOST:PORT of a running broker.")
    ] = "embedded",
    workdir: Annotated[
        Path, typer.Option(help="Broker, cloud database, outboxes and report.json.")
    ] = Path(".edgefleet-demo"),
    keep_running: Annotated[
        bool, typer.Option(help="Keep the broker, cloud and dashboard up after the run.")
    ] = False,
    fl_timeout: Annotated[
        float,
        typer.Option(
            min=0.1,
            help="Seconds the federated round waits for its trainers to connect, and for "
            "their replies (raise it on a loaded machine).",
        ),
    ] = FL_TIMEOUT_S,
) -> None:
    """Show the whole system end to end on this machine."""
    parse_broker(broker)  # a bad --broker fails at once (exit 4), before any build
    # Absolute once, here: the broker, the SuperLink and the ServerApp run in other directories.
    workdir = absolute(workdir)
    console = make_console()
    workdir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        filename=str(workdir / "demo.log"),
        level=logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        force=True,
    )
    options = SimOptions(
        devices=devices,
        duration=duration,
        scenario=demo_scenario(duration, devices),
        broker=broker,
        processes=1 if devices <= 60 else 2,
        workdir=workdir,
    )
    sim = Simulation(options, console)
    learned = Learned()
    try:
        sim.prepare()
        sim.print_access(console)
        console.print(f"[bold]work directory[/] {workdir}", highlight=False)
        reason = learning_reason()
        if reason is None:
            try:
                federated_round(sim, console, learned, timeout=fl_timeout)
                sim.notes.append(learned.how)
            except Exception as exc:  # an invariant row fails with it; the demo goes on
                reason = f"{type(exc).__name__}: {exc}"
                logging.getLogger(__name__).exception("federated round failed")
        if reason is not None:
            learned.round_error = reason
            console.print(f"[red]federated round FAILED[/]: {reason}", highlight=False)
            try:
                central_fallback(sim, learned, reason)
            except Exception as exc:  # the assignment row says it
                learned.retrain_error = f"{type(exc).__name__}: {exc}"
                logging.getLogger(__name__).exception("central re-training failed")
        report = sim.run(
            hooks=[(duration * 0.5, "learning", partial(learning_step, learned))],
            checks=[learned.checks],
        )
        assert report.checks is not None
        sim.summary(report.checks)
        for note in report.notes:
            console.print(f"note: {note}")
        console.print(
            f"{report.devices} devices, {report.totals['produced']} records produced, "
            f"{report.totals['stored']} stored exactly once, {report.totals['dropped']} dropped; "
            f"report: {workdir / 'report.json'}",
            highlight=False,
        )
        if keep_running:
            urls = ", ".join(f"{k}: {v}" for k, v in sim.state.urls.items())
            console.print(f"[bold]still serving[/] {urls}; Ctrl-C stops", highlight=False)
            while True:
                time.sleep(1)
    finally:
        if learned.trainers is not None:
            learned.trainers.stop()
        sim.close()
    if not report.ok:
        failed = [i["name"] for i in report.invariants if not i["ok"]]
        raise InvariantViolation(f"invariants failed: {'; '.join(failed)}")
    console.print("[green]every invariant holds[/]")
