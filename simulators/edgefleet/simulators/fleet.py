"""The coordinator: broker, cloud, worker processes, the broker-wide timeline, checks, report.

``Simulation(options).run()`` plans the fleet, builds (or reuses) the bundles, starts the
broker and the cloud (or uses running ones: ``--broker URL``, ``--cloud URL``), spawns P
worker processes (spawn context: no inherited locks or TF state), plays broker outages,
renders the live view, then checks every invariant and writes the report. Device-level
events run inside the workers, on the devices' own loop.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing as mp
import queue
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from rich.console import Console
from rich.live import Live

from edgefleet.cloud.app import Cloud, CloudConfig
from edgefleet.cloud.broker import BrokerProcess, EmbeddedBroker, MosquittoBroker
from edgefleet.cloud.broker.mosquitto import mosquitto_available
from edgefleet.cloud.client import CloudClient
from edgefleet.cloud.commandsigner import ensure_command_key
from edgefleet.cloud.store import open_store
from edgefleet.cloud.store.base import TERMINAL_STATES
from edgefleet.protocol.errors import ConfigError
from edgefleet.simulators.bundles import BundleCache
from edgefleet.simulators.cloudview import ApiView, CloudView, StoreView, check_cloud_url
from edgefleet.simulators.device import DeviceResult, Tuning
from edgefleet.simulators.driftseen import (
    DriftSeen,
    drift_actions,
    neighbours,
    observe,
    observe_all,
)
from edgefleet.simulators.errors import ScenarioError, SimulationError
from edgefleet.simulators.invariants import Checks, Invariant, check_run
from edgefleet.simulators.live import LiveState, status, summary_table
from edgefleet.simulators.observer import StatusObserver
from edgefleet.simulators.plan import Action, FleetPlan, plan_fleet
from edgefleet.simulators.report import Report, build_report, write_report
from edgefleet.simulators.scenario import (
    BrokerOutage,
    DriftOnset,
    OutboxCap,
    Partition,
    Scenario,
    default_scenario,
)
from edgefleet.simulators.worker import WorkerSpec, worker_main

Hook = Callable[["Simulation"], None]
# A check of the caller's (the demo's learning step), run with the others at the end.
ExtraCheck = Callable[[CloudView], list[Invariant]]
# Plain progress lines (output that is not a terminal): one every this many seconds.
PROGRESS_EVERY_S = 5.0
# The cloud's view of a drift is first read this long after its onset (the live timeline).
DRIFT_LOOK_AFTER_S = 8.0


@dataclass(frozen=True, slots=True)
class SimOptions:
    """Everything ``edgefleet sim run`` takes."""

    devices: int | None = None
    duration: float | None = None
    scenario: Scenario = field(default_factory=default_scenario)
    broker: str = "auto"
    # None: start the cloud in this process (--with-cloud); a URL: use that running cloud.
    cloud_url: str | None = None
    # The API token for --cloud (env EDGEFLEET_TOKEN); a cloud started here makes its own.
    token: str | None = None
    # For --cloud: its command.pub; a cloud started here makes (and uses) its own key.
    command_key: Path | None = None
    db_url: str | None = None
    processes: int = 1
    seed: int | None = None
    workdir: Path = Path(".edgefleet-sim")
    report: Path | None = None
    tuning: Tuning = field(default_factory=Tuning)
    drain_timeout: float = 90.0
    cache_dir: Path | None = None
    live: bool = True
    http_port: int = 0
    start_timeout: float = 180.0

    def __post_init__(self) -> None:
        # Paths enter here once, absolute: the broker, the cloud's SuperLink and ServerApp run
        # as child processes in other directories, and a relative path breaks there.
        object.__setattr__(self, "workdir", absolute(self.workdir))
        if self.report is not None:
            object.__setattr__(self, "report", absolute(self.report))
        if self.cache_dir is not None:
            object.__setattr__(self, "cache_dir", absolute(self.cache_dir))
        if self.processes < 1:
            raise ConfigError("--processes must be at least 1")
        if self.devices is not None and self.devices < 1:
            raise ConfigError("--devices must be at least 1")
        if self.command_key is not None:
            object.__setattr__(self, "command_key", absolute(self.command_key))
        if self.cloud_url is not None:
            check_cloud_url(self.cloud_url)
            if self.command_key is None:
                raise ConfigError(
                    "--cloud needs --command-key PATH: that cloud's keys/command.pub (agents "
                    "refuse commands, commit-acks too, that no trusted key signed)"
                )
            if self.db_url is not None:
                raise ConfigError(
                    "--db is the store of the cloud the simulator starts (--with-cloud); "
                    "a running cloud (--cloud URL) keeps its own"
                )


def absolute(path: Path | str) -> Path:
    """``path`` made absolute against the current directory (``~`` expanded)."""
    return Path(path).expanduser().resolve()


def parse_broker(spec: str) -> tuple[str, str | None]:
    """``auto``, ``embedded``, ``mosquitto`` or ``mqtt://HOST:PORT`` -> (kind, url)."""
    if spec in ("auto", "embedded", "mosquitto"):
        return spec, None
    url = urlparse(spec)
    if url.scheme not in ("mqtt", "tcp") or not url.hostname:
        raise ConfigError(f"--broker {spec!r}: give embedded, mosquitto, auto, or mqtt://HOST:PORT")
    return "url", f"mqtt://{url.hostname}:{url.port or 1883}"


class Simulation:
    """One simulated run; use :meth:`run` (or :meth:`prepare` then :meth:`run`)."""

    def __init__(self, options: SimOptions, console: Console | None = None) -> None:
        self.options = options
        self.console = console or Console()
        self.kind, self.external_broker = parse_broker(options.broker)
        scenario = options.scenario
        if options.seed is not None:
            import msgspec

            scenario = msgspec.structs.replace(scenario, seed=options.seed)
        self.plan: FleetPlan = plan_fleet(scenario, options.devices, options.duration)
        if self.plan.broker_outages and self.external_broker is not None:
            raise ScenarioError(
                "the scenario has a broker-outage but --broker names a running broker the "
                "simulator cannot stop; use --broker embedded or mosquitto"
            )
        if options.cloud_url is not None and self.external_broker is None:
            raise ConfigError(
                f"--cloud {options.cloud_url} needs --broker mqtt://HOST:PORT: the broker that "
                "cloud ingests from (its devices must publish where it listens)"
            )
        self.workdir = options.workdir
        self.bundles = BundleCache(options.cache_dir)
        self.broker: BrokerProcess | None = None
        self.cloud: Cloud | None = None
        self.view: CloudView | None = None
        # Assignments the external cloud already had: not this run's to answer for.
        self.earlier_assignments: frozenset[str] = frozenset()
        self.observer: StatusObserver | None = None
        self.state = LiveState(
            title=f"edgefleet sim: {scenario.name} (seed {scenario.seed})",
            duration=self.plan.duration,
            devices=len(self.plan.devices),
        )
        self.timeline: list[dict[str, Any]] = []
        self.notes: list[str] = []
        # The run's start on the wall clock (set when the workers get the go).
        self.t0: float | None = None
        self.drift_seen: list[DriftSeen] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------ set-up

    @property
    def broker_url(self) -> str:
        """The broker every device and the cloud use."""
        if self.external_broker is not None:
            return self.external_broker
        assert self.broker is not None, "prepare() first"
        return self.broker.url

    @property
    def http_url(self) -> str:
        """The cloud's API."""
        if self.options.cloud_url is not None:
            return check_cloud_url(self.options.cloud_url)
        assert self.cloud is not None, "prepare() first"
        return self.cloud.http_url

    @property
    def api_token(self) -> str | None:
        """The token API calls send: --token for --cloud, else the admin token of our cloud."""
        if self.options.cloud_url is not None:
            return self.options.token
        return self.cloud.admin_token if self.cloud is not None else None

    def client(self) -> CloudClient:
        """A client of the cloud's API with :attr:`api_token`."""
        return CloudClient(self.http_url, token=self.api_token)

    def print_access(self, console: Console) -> None:
        """The URLs, and for a cloud started here its API token and the dashboard's login."""
        for name, url in self.state.urls.items():
            console.print(f"[bold]{name}[/] {url}", highlight=False)
        if self.cloud is None or not self.cloud.admin_token:
            return
        where = self.cloud.config.workdir / "admin.token"
        console.print(
            f"[bold]API token[/] {self.cloud.admin_token} (admin; also in {where})",
            highlight=False,
            soft_wrap=True,
        )
        console.print(
            f"[bold]dashboard login[/] {self.http_url}/login: paste the API token; "
            f'API: curl -H "Authorization: Bearer $(cat {where})" {self.http_url}/v1/devices',
            highlight=False,
            soft_wrap=True,
        )

    def say(self, text: str) -> None:
        """Add a line to the live view's event log and the report's timeline."""
        with self._lock:
            self.state.event(text)
            at = time.monotonic() - self.state.started if self.state.started else 0.0
            self.timeline.append({"at": round(at, 2), "event": text})

    def _fresh_workdir(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # A run's accounting starts from empty outboxes and an empty store.
        for name in ("devices", "cloud", "broker", "report.json"):
            path = self.workdir / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()

    def build_bundles(self) -> dict[str, Path]:
        """Build (or reuse) the reference bundle of every model the groups run."""
        names = sorted({d.model for d in self.plan.devices if d.model != "none"})
        self.bundles.ensure_keys()
        out: dict[str, Path] = {}
        for name in names:
            hit = self.bundles.cached(name)
            if hit is None:
                with status(self.console, f"building {name} (first run only, cached after)"):
                    hit = self.bundles.ensure(name)
            out[name] = hit.directory
        return out

    def prepare(self) -> None:
        """Fresh work directory, bundles, broker, cloud and the status observer."""
        self._fresh_workdir()
        self.bundle_dirs = self.build_bundles()
        if self.external_broker is None:
            use = self.kind
            if use == "auto":
                use = "mosquitto" if mosquitto_available() else "embedded"
            cls = MosquittoBroker if use == "mosquitto" else EmbeddedBroker
            self.broker = cls(self.workdir / "broker").start(timeout=30)
        if self.options.cloud_url is not None:
            api = ApiView(self.options.cloud_url, token=self.options.token)
            api.check()
            self.earlier_assignments = frozenset(a.id for a in api.assignments())
            self.view = api
        else:
            self._start_cloud()
        self.state.urls["broker"] = self.broker_url
        self.state.urls["API"] = self.http_url + "/docs"
        if getattr(self.cloud, "dashboard", None) is not None:
            # The page itself: /dashboard only redirects here.
            self.state.urls["dashboard"] = self.http_url + "/"
        host, port = self._host_port()
        self.observer = StatusObserver(host, port, self.plan.scenario.fleet)
        if not self.observer.wait_subscribed(15):
            raise SimulationError(f"cannot subscribe to the broker at {self.broker_url}")

    def _start_cloud(self) -> None:
        embedded = isinstance(self.broker, EmbeddedBroker)
        self.cloud = Cloud(
            CloudConfig(
                workdir=self.workdir / "cloud",
                broker_url=self.broker_url,
                db_url=self.options.db_url,
                http_port=self.options.http_port,
                trusted_keys=(self.bundles.public_key,),
                fleet=self.plan.scenario.fleet,
                mqtt_version="3.1.1" if embedded else None,
            )
        ).start(timeout=60)
        self.view = StoreView(open_store(self.cloud.db_url))

    def _host_port(self) -> tuple[str, int]:
        url = urlparse(self.broker_url)
        return url.hostname or "127.0.0.1", url.port or 1883

    # ------------------------------------------------------------------ running

    def command_pub(self) -> Path:
        """The public key the simulated agents accept commands from."""
        if self.options.command_key is not None:
            return self.options.command_key
        return ensure_command_key(self.workdir / "cloud")[1]

    def _specs(self) -> list[WorkerSpec]:
        host, port = self._host_port()
        proxied = tuple(
            sorted(
                {
                    a.event.group
                    for a in self.plan.actions
                    if isinstance(a.event, Partition | OutboxCap)
                }
            )
        )
        specs = []
        for i, devices in enumerate(self.plan.split(self.options.processes)):
            if not devices:
                continue
            mine = {d.device_id for d in devices}
            actions = tuple(
                a
                for a in self.plan.actions
                if not isinstance(a.event, BrokerOutage) and set(a.devices) & mine
            )
            specs.append(
                WorkerSpec(
                    index=i,
                    devices=devices,
                    actions=actions,
                    duration=self.plan.duration,
                    fleet=self.plan.scenario.fleet,
                    host=host,
                    port=port,
                    workdir=self.workdir,
                    bundles=self.bundle_dirs,
                    trusted_keys=(self.bundles.public_key,),
                    command_keys=(self.command_pub(),),
                    tuning=self.options.tuning,
                    proxied_groups=proxied,
                    drain_timeout=self.options.drain_timeout,
                )
            )
        return specs

    def outage(self, action: Action) -> None:
        """Take the broker down for the outage's length, then start it again."""
        ev = action.event
        assert isinstance(ev, BrokerOutage)
        assert self.broker is not None
        how = "killed" if ev.hard else "stopped"
        self.say(f"broker {how} for {ev.duration:g}s")
        self.state.broker_up = False
        if ev.hard:
            self.broker.kill()
        else:
            self.broker.stop()
        time.sleep(ev.duration)
        self.broker.start(timeout=30)
        self.state.broker_up = True
        self.say("broker back")

    def background(self, fn: Callable[[], None], name: str) -> None:
        """Run ``fn`` on a thread (hooks and outages must not stall the live view)."""

        def guarded() -> None:
            try:
                fn()
            except Exception as exc:
                self.say(f"[red]{name} failed: {type(exc).__name__}: {exc}[/]")
                self.notes.append(f"{name} failed: {type(exc).__name__}: {exc}")

        t = threading.Thread(target=guarded, name=f"sim-{name}", daemon=True)
        t.start()
        self._threads.append(t)

    def _drift_hooks(self) -> list[tuple[float, str, Hook]]:
        """Say each drift onset on the timeline, then what the cloud saw of it so far."""
        hooks: list[tuple[float, str, Hook]] = []
        for action in drift_actions(self.plan):
            ev = action.event
            assert isinstance(ev, DriftOnset)
            ids = ", ".join(action.devices[:5]) + (" ..." if len(action.devices) > 5 else "")
            text = (
                f"drift onset: {ev.drift} x{ev.magnitude:g} into group {ev.group} "
                f"({len(action.devices)} devices: {ids})"
            )
            hooks.append((action.at, "drift", functools.partial(Simulation.say, text=text)))
            look = min(action.at + DRIFT_LOOK_AFTER_S, self.plan.duration)
            if look > action.at:
                hooks.append((look, "drift-seen", functools.partial(_look, action=action)))
        return hooks

    def run(
        self,
        hooks: list[tuple[float, str, Hook]] | None = None,
        checks: Sequence[ExtraCheck] = (),
    ) -> Report:
        """Run the fleet to the end and return the checked report (not raising on failure).

        ``checks`` add invariants of the caller's own (read from the cloud after the run).
        """
        if self.cloud is None:
            self.prepare()
        started = time.time()
        ctx = mp.get_context("spawn")
        timed = sorted([*(hooks or []), *self._drift_hooks()], key=lambda h: h[0])
        run = _Run(self, ctx, self._specs(), timed)
        # A rich live panel on a terminal; elsewhere (a pipe, a CI log) plain progress lines.
        panel = self.options.live and self.console.is_terminal
        lines = _Lines(self) if self.options.live and not panel else None
        live = Live(self.state.render(), console=self.console, auto_refresh=False)
        try:
            with live if panel else contextlib.nullcontext():
                self.state.phase = "starting agents"
                while not run.finished():
                    run.step()
                    if panel:
                        live.update(self.state.render(), refresh=True)
                    elif lines is not None:
                        lines.step()
                for t in self._threads:
                    t.join(120)
                self.state.phase = "checking"
                if panel:
                    live.update(self.state.render(), refresh=True)
                elif lines is not None:
                    lines.step(force=True)
        finally:
            run.close()
        if run.errors:
            raise SimulationError("a simulator worker failed: " + "\n".join(run.errors)[-4000:])
        flat = [r for i in sorted(run.results) for r in run.results[i]]
        result = self._check(flat)
        view = self.view
        assert view is not None
        for extra in checks:
            result.invariants.extend(extra(view))
        self.drift_seen = self._observe_drifts(time.time())
        report = build_report(self, result, time.time() - started)
        write_report(report, self.options.report or self.workdir / "report.json")
        return report

    def _observe_drifts(self, until: float) -> list[DriftSeen]:
        """What the cloud stored of every drift onset, up to the end of the run."""
        if self.t0 is None or self.view is None:
            return []
        return observe_all(self.view, self.plan, self.t0, until)

    def _check(self, results: list[DeviceResult]) -> Checks:
        view, observer = self.view, self.observer
        assert view is not None
        assert observer is not None
        # Wills reach the observer and acks reach the store asynchronously: wait (bounded) for
        # every expected will and for every assignment target to settle before checking.
        expected = {(r.device_id, c.boot_id) for r in results for c in r.crashes if c.connected}
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            settled = all(
                t.state in TERMINAL_STATES
                for a in view.assignments()
                if a.id not in self.earlier_assignments
                for t in a.targets
            )
            if expected <= observer.wills() and settled:
                break
            time.sleep(0.1)
        return check_run(
            results,
            view,
            observer.wills(),
            len(self.plan.devices),
            this_run_only=self.cloud is None,
            earlier_assignments=self.earlier_assignments,
        )

    def close(self) -> None:
        """Stop the observer, the cloud and the broker we started."""
        if self.observer is not None:
            with contextlib.suppress(Exception):
                self.observer.close()
            self.observer = None
        if self.view is not None:
            self.view.close()
            self.view = None
        if self.cloud is not None:
            self.cloud.stop()
            self.cloud = None
        if self.broker is not None:
            self.broker.stop()
            self.broker = None

    def summary(self, checks: Checks) -> None:
        """Print the per-device table, the invariants and what the cloud saw of each drift."""
        self.console.print(summary_table(checks))
        for seen in self.drift_seen:
            self.console.print(seen.summary(), highlight=False)


def _look(sim: Simulation, action: Action) -> None:
    """The timeline's line on what the cloud has stored of a drift so far."""
    if sim.t0 is None or sim.view is None:
        return
    since, _ = neighbours(sim.plan, action)
    seen = observe(sim.view, sim.plan, action, sim.t0, time.time(), since=sim.t0 + since)
    sim.say(f"cloud so far: {seen.summary()}")


class _Lines:
    """Plain progress for output that is not a terminal: new timeline events, a periodic line."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.printed = 0
        self.last = 0.0

    def step(self, *, force: bool = False) -> None:
        """Print the events since the last call, and the state every few seconds."""
        state, console = self.sim.state, self.sim.console
        with self.sim._lock:
            new, self.printed = state.log[self.printed :], len(state.log)
        for line in new:
            console.print(line, highlight=False)
        now = time.monotonic()
        if force or now - self.last >= PROGRESS_EVERY_S:
            self.last = now
            console.print(state.line(), highlight=False)


class _Run:
    """The worker processes of one run and the coordinator's side of their conversation."""

    def __init__(
        self,
        sim: Simulation,
        ctx: Any,
        specs: list[WorkerSpec],
        hooks: list[tuple[float, str, Hook]],
    ) -> None:
        self.sim = sim
        self.specs = specs
        self.out: Any = ctx.Queue()
        self.go, self.abort = ctx.Event(), ctx.Event()
        self.t0 = ctx.Value("d", 0.0)
        self.hooks = hooks
        self.outages = list(sim.plan.broker_outages)
        self.ready: set[int] = set()
        self.results: dict[int, list[DeviceResult]] = {}
        self.errors: list[str] = []
        self.deadline = time.monotonic() + sim.options.start_timeout
        self.last_count = 0.0
        self.procs = [
            ctx.Process(
                target=worker_main,
                args=(s, self.out, self.go, self.t0, self.abort),
                name=f"sim-{s.index}",
            )
            for s in specs
        ]
        for p in self.procs:
            p.start()

    def finished(self) -> bool:
        """Every worker has answered (a result or an error)."""
        return len(self.results) + len(self.errors) >= len(self.specs)

    def step(self) -> None:
        """Start the clock once all are ready, run due outages and hooks, read one message."""
        sim, now = self.sim, time.monotonic()
        if not self.go.is_set():
            if len(self.ready) == len(self.specs):
                self.t0.value = time.time() + 0.2
                sim.t0 = self.t0.value
                sim.state.started = now + 0.2
                sim.state.phase = "running"
                self.go.set()
            elif now > self.deadline:
                raise SimulationError(f"the agents did not start in {sim.options.start_timeout:g}s")
        else:
            self._due(now - sim.state.started)
        try:
            kind, index, payload = self.out.get(timeout=0.25)
            self._handle(kind, index, payload)
        except queue.Empty:
            if not any(p.is_alive() for p in self.procs):
                answered = set(self.results) | {int(e.split(":")[0]) for e in self.errors}
                for s in self.specs:
                    if s.index not in answered:
                        self.errors.append(f"{s.index}: worker exited without a result")
        if sim.view is not None and now - self.last_count > 2.0:
            self.last_count = now
            with contextlib.suppress(Exception):
                stored = sim.view.stored()
                if stored is not None:
                    sim.state.stored = stored

    def _due(self, elapsed: float) -> None:
        sim = self.sim
        while self.outages and self.outages[0].at <= elapsed:
            sim.background(functools.partial(sim.outage, self.outages.pop(0)), "outage")
        while self.hooks and self.hooks[0][0] <= elapsed:
            _, name, hook = self.hooks.pop(0)
            sim.background(functools.partial(hook, sim), name)
        if elapsed > sim.plan.duration:
            sim.state.phase = "draining"

    def _handle(self, kind: str, index: int, payload: Any) -> None:
        sim = self.sim
        if kind == "ready":
            self.ready.add(index)
            sim.say(f"process {index}: {payload} agents serving")
        elif kind == "snap":
            sim.state.add_snapshot(index, payload)
        elif kind == "event":
            sim.say(payload)
        elif kind == "result":
            self.results[index] = payload
        elif kind == "error":
            self.errors.append(f"{index}: {payload}")

    def close(self) -> None:
        """Tell the workers to stop and reap them."""
        self.abort.set()
        for p in self.procs:
            p.join(30)
            if p.is_alive():
                p.kill()


def run_simulation(options: SimOptions, console: Console | None = None) -> Report:
    """Plan, run, check and report one simulation, then stop everything it started."""
    sim = Simulation(options, console)
    try:
        sim.prepare()
        return sim.run()
    finally:
        sim.close()
