"""What the cloud saw of each drift the timeline injected: its devices before and after the onset.

A drift onset is the simulator's own act, so it knows when and where: the scenario's ``at``
on the run's clock and the devices of the group. What matters is whether the cloud *saw* it.
This reads, through the same :class:`CloudView` the invariants use (the store, or a running
cloud's API), the inference records and drift sketches those devices sent before and after
the onset: the mean model score, the share of each label, and the sketch feature that moved
most. The devices of the same model that were not drifted are read the same way, as the
control: a change in both is the run (a new model version, a crash), not the drift.

Windows are on the devices' clocks (``t``, what the cloud filters on); a device skewed by a
``clock-skew`` event is read on its own clock, slightly off.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from edgefleet.simulators.cloudview import CloudView
from edgefleet.simulators.plan import Action, FleetPlan
from edgefleet.simulators.scenario import DriftOnset

# Records read per device and window: enough for a mean, bounded for a 2000-device fleet.
PER_DEVICE = 5000
# Devices read per side (drifted, control): a sample of a large group says the same.
MAX_DEVICES = 50


@dataclass(slots=True)
class Window:
    """Inference records and drift sketches of some devices over one stretch of time."""

    records: int = 0
    mean_score: float | None = None
    labels: dict[str, float] = field(default_factory=dict)
    sketches: int = 0
    # Count-weighted mean and spread of every sketched feature (inputs and score).
    features: dict[str, tuple[float, float]] = field(default_factory=dict)


@dataclass(slots=True)
class DriftSeen:
    """One drift onset, and what the cloud stored of it."""

    at: float
    group: str
    drift: str
    magnitude: float
    devices: list[str]
    before: Window
    after: Window
    control_devices: list[str]
    control_before: Window
    control_after: Window
    # The sketched feature whose mean moved most on the drifted devices, in units of its spread.
    moved: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        """One line: the onset and the score change the cloud saw, drifted vs control."""
        out = (
            f"drift {self.drift} x{self.magnitude:g} into {self.group} "
            f"({len(self.devices)} devices) at {self.at:g}s: the cloud saw "
            f"{_score_change(self.before, self.after)}"
        )
        if self.control_devices:
            out += f"; control ({len(self.control_devices)} devices not drifted): "
            out += _score_change(self.control_before, self.control_after)
        if self.moved:
            m = self.moved
            out += (
                f"; sketches: {m['feature']} mean {m['before']:.3g} -> {m['after']:.3g} "
                f"({m['shift_sd']:+.1f} sd)"
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        """The report's form (JSON-ready)."""
        return asdict(self)


def _score_change(before: Window, after: Window) -> str:
    if before.mean_score is None or after.mean_score is None:
        return f"no scores ({before.records} records before, {after.records} after)"
    out = f"mean score {before.mean_score:.3f} -> {after.mean_score:.3f}"
    # The label whose share changed most ("anomaly" for the anomaly model).
    names = set(before.labels) | set(after.labels)
    if names:
        label = max(
            sorted(names), key=lambda k: abs(after.labels.get(k, 0.0) - before.labels.get(k, 0.0))
        )
        out += (
            f", {label} {before.labels.get(label, 0.0):.0%} -> {after.labels.get(label, 0.0):.0%}"
        )
    return out + f" ({before.records} -> {after.records} records)"


def read_window(view: CloudView, devices: list[str], since: float, until: float) -> Window:
    """The cloud's inference records and drift sketches of ``devices`` with since <= t < until."""
    w = Window()
    scores: list[float] = []
    labels: Counter[str] = Counter()
    sums: dict[str, list[float]] = {}  # name -> [count, sum, sum of squares]
    for device in devices:
        for r in view.records("inference", device, since, until, PER_DEVICE):
            w.records += 1
            if r.get("score") is not None:
                scores.append(float(r["score"]))
            if r.get("label") is not None:
                labels[str(r["label"])] += 1
        for r in view.records("drift", device, since, until, PER_DEVICE):
            w.sketches += 1
            for f in r.get("features") or []:
                n = float(f.get("count") or 0)
                if n <= 0:
                    continue
                mean, std = float(f["mean"]), float(f.get("std") or 0.0)
                acc = sums.setdefault(str(f["name"]), [0.0, 0.0, 0.0])
                acc[0] += n
                acc[1] += n * mean
                acc[2] += n * (std * std + mean * mean)
    if scores:
        w.mean_score = sum(scores) / len(scores)
    total = sum(labels.values())
    w.labels = {k: round(v / total, 4) for k, v in labels.most_common(5)} if total else {}
    for name, (n, s1, s2) in sums.items():
        mean = s1 / n
        w.features[name] = (mean, math.sqrt(max(0.0, s2 / n - mean * mean)))
    return w


def _moved(before: Window, after: Window) -> dict[str, Any]:
    best: dict[str, Any] = {}
    for name, (m0, sd0) in before.features.items():
        if name not in after.features:
            continue
        m1 = after.features[name][0]
        shift = (m1 - m0) / sd0 if sd0 > 0 else 0.0
        if not best or abs(shift) > abs(best["shift_sd"]):
            best = {"feature": name, "before": m0, "after": m1, "shift_sd": round(shift, 2)}
    return best


def drift_actions(plan: FleetPlan) -> list[Action]:
    """The plan's drift onsets, in time order."""
    return [a for a in plan.actions if isinstance(a.event, DriftOnset)]


def observe(
    view: CloudView,
    plan: FleetPlan,
    action: Action,
    t0: float,
    until: float,
    *,
    since: float | None = None,
) -> DriftSeen:
    """What the cloud stored of one onset: from ``since`` to it, and from it to ``until``.

    ``t0`` is the run's start on the wall clock (the devices' clock without skew); ``since``
    defaults to it.
    """
    ev = action.event
    assert isinstance(ev, DriftOnset)
    onset = t0 + action.at
    start = t0 if since is None else since
    drifted = list(action.devices)
    model = {d.device_id: d.model for d in plan.devices}
    models = {model[d] for d in drifted}
    control = [
        d.device_id for d in plan.devices if d.model in models and d.device_id not in set(drifted)
    ]
    mine, theirs = drifted[:MAX_DEVICES], control[:MAX_DEVICES]
    before, after = read_window(view, mine, start, onset), read_window(view, mine, onset, until)
    return DriftSeen(
        at=action.at,
        group=ev.group,
        drift=ev.drift,
        magnitude=ev.magnitude,
        devices=drifted,
        before=before,
        after=after,
        control_devices=control,
        control_before=read_window(view, theirs, start, onset),
        control_after=read_window(view, theirs, onset, until),
        moved=_moved(before, after),
    )


def observe_all(view: CloudView, plan: FleetPlan, t0: float, end: float) -> list[DriftSeen]:
    """Every onset of the run: each compared with the stretch since the last one on its devices.

    Successive drifts of one group (``drift.yaml``) are each judged against the signal just
    before them, and their "after" ends where the next one starts.
    """
    out = []
    for a in drift_actions(plan):
        since, nxt = neighbours(plan, a)
        until = min(end, t0 + nxt) if nxt is not None else end
        out.append(observe(view, plan, a, t0, until, since=t0 + since))
    return out


def neighbours(plan: FleetPlan, action: Action) -> tuple[float, float | None]:
    """The onsets on the same devices just before ``action`` (0: the start) and after it."""
    mine = set(action.devices)
    others = [b.at for b in drift_actions(plan) if b is not action and mine & set(b.devices)]
    earlier = [at for at in others if at < action.at]
    later = [at for at in others if at > action.at]
    return max(earlier, default=0.0), min(later, default=None)
