"""The checks at the end of every run: nothing lost, nothing stored twice, every will, every ack.

*Produced* records are the seqs a device gave out: 1..``last_seq`` of every boot, read from
its outbox file (a seq exists only once its record is durably in the outbox, so a power cut
never leaves a hole). Records still queued in memory at a crash never got a seq; they are
reported as ``unsaved_at_crash`` (the agent's documented loss window), not as produced.

Seqs alone cannot show a reading lost between the source and the outbox (it never got one).
For devices that publish their raw readings (one record per sample), the samples their source
handed to the agent are checked too: every one must be a reading record the cloud stored or
the outbox still holds, unless a counted drop or crash loss explains it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from edgefleet.cloud.store.base import TERMINAL_STATES, Assignment
from edgefleet.simulators.cloudview import CloudView
from edgefleet.simulators.device import DeviceResult


@dataclass(slots=True)
class DeviceCheck:
    """One device's accounting: what it produced against what the cloud stored."""

    device_id: str
    group: str
    boots: int
    produced: int
    stored: int
    duplicates: int
    dropped: int
    left_in_outbox: int
    missing: int
    lost: int
    unknown: int
    crashes: int
    wills_expected: int
    wills_seen: int
    unsaved_at_crash: int
    samples: int
    readings_stored: int
    samples_unaccounted: int
    published_messages: int
    replays: int
    resends: int
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Every produced record is stored once, counted as dropped, or still in the outbox."""
        return (
            self.lost == 0
            and self.duplicates == 0
            and self.unknown == 0
            and self.wills_seen == self.wills_expected
            and self.samples_unaccounted == 0
            and self.error is None
        )


@dataclass(frozen=True, slots=True)
class Invariant:
    """One named check and its outcome."""

    name: str
    ok: bool
    detail: str


@dataclass(slots=True)
class Checks:
    """All invariants of a run, per device and fleet-wide."""

    devices: list[DeviceCheck] = field(default_factory=list)
    invariants: list[Invariant] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every invariant holds."""
        return all(i.ok for i in self.invariants)

    def total(self, name: str) -> int:
        """The sum of one DeviceCheck counter over the fleet."""
        return sum(int(getattr(d, name)) for d in self.devices)


def check_device(
    result: DeviceResult,
    cloud: CloudView,
    wills: set[tuple[str, str]],
    *,
    this_run_only: bool = False,
) -> DeviceCheck:
    """Compare one device's outbox accounting with the cloud's store and the wills seen.

    ``this_run_only`` ignores stored records of boots this run did not make: a cloud the
    simulator did not start may hold the same device ids from earlier runs (boot ids are
    unique per boot, so a record of this run's boots is never mistaken for an old one).
    """
    by_table = cloud.device_keys(result.device_id)
    if this_run_only:
        by_table = {t: [k for k in keys if k[0] in result.boots] for t, keys in by_table.items()}
    stored: Counter[tuple[str, int]] = Counter(k for keys in by_table.values() for k in keys)
    produced = {(b, s) for b, last in result.boots.items() for s in range(1, last + 1)}
    left = set(result.left)
    stored_keys = set(stored)
    missing = produced - stored_keys - left
    expected = [c for c in result.crashes if c.connected]
    unsaved = sum(c.unsaved for c in result.crashes)
    stored_readings = set(by_table.get("readings", ()))
    readings = len(stored_readings)
    unaccounted = 0
    if result.publish_readings:
        # Each sample is one reading record: stored or still queued in the outbox, or else
        # explained by a drop (any table's) or by the records unsaved at a crash. A record
        # can be both stored and queued (its commit-ack was still on the way at the end),
        # so the two are united by key, not added.
        have = len(stored_readings | set(result.left_readings))
        unaccounted = max(0, result.samples - have - result.dropped - unsaved)
        unaccounted += max(0, have - result.samples)
    return DeviceCheck(
        device_id=result.device_id,
        group=result.group,
        boots=len(result.boots),
        produced=len(produced),
        stored=len(stored_keys & produced),
        duplicates=sum(n - 1 for n in stored.values() if n > 1),
        dropped=result.dropped,
        left_in_outbox=len(left),
        missing=len(missing),
        # A drop removes the oldest rows, some of which the cloud may already have stored:
        # every record the cloud lacks must be covered by a counted drop.
        lost=max(0, len(missing) - result.dropped),
        unknown=len(stored_keys - produced),
        crashes=len(result.crashes),
        wills_expected=len(expected),
        wills_seen=sum((result.device_id, c.boot_id) in wills for c in expected),
        unsaved_at_crash=unsaved,
        samples=result.samples,
        readings_stored=readings,
        samples_unaccounted=unaccounted,
        published_messages=result.published_messages,
        replays=result.replays,
        resends=result.resends,
        error=result.error,
    )


def check_assignments(assignments: list[Assignment]) -> Invariant:
    """Every assigned model was acked (succeeded) or refused/failed with a reason."""
    open_, unexplained, total = [], [], 0
    for a in assignments:
        for t in a.targets:
            total += 1
            if t.state not in TERMINAL_STATES:
                open_.append(f"{t.device_id}:{a.model}@{a.version}={t.state}")
            elif t.state != "succeeded" and not t.reason:
                unexplained.append(f"{t.device_id}:{a.model}@{a.version}={t.state}")
    ok = not open_ and not unexplained
    detail = f"{total} targets in {len(assignments)} assignments"
    if open_:
        detail += f"; never answered: {', '.join(open_[:10])}"
    if unexplained:
        detail += f"; refused without a reason: {', '.join(unexplained[:10])}"
    return Invariant("every assigned model acked or refused with a reason", ok, detail)


def check_run(
    results: list[DeviceResult],
    cloud: CloudView,
    wills: set[tuple[str, str]],
    expected_devices: int,
    *,
    this_run_only: bool = False,
    earlier_assignments: frozenset[str] = frozenset(),
) -> Checks:
    """Every invariant of a finished run (``earlier_assignments``: ids made before it, skipped)."""
    checks = Checks(
        devices=[check_device(r, cloud, wills, this_run_only=this_run_only) for r in results]
    )
    c = checks
    bad = [d.device_id for d in c.devices if not d.ok]
    produced, stored = c.total("produced"), c.total("stored")
    c.invariants.append(
        Invariant(
            "every device reported",
            len(results) == expected_devices,
            f"{len(results)} of {expected_devices} devices reported their outbox",
        )
    )
    c.invariants.append(
        Invariant(
            "produced = stored once + dropped (+ still in the outbox)",
            c.total("lost") == 0 and c.total("unknown") == 0,
            f"produced {produced}, stored {stored}, dropped {c.total('dropped')}, "
            f"in outboxes {c.total('left_in_outbox')}, lost {c.total('lost')}, "
            f"unknown {c.total('unknown')}",
        )
    )
    readers = [d for d, r in zip(c.devices, results, strict=True) if r.publish_readings]
    c.invariants.append(
        Invariant(
            "every sample read is a reading record (stored, queued, dropped or unsaved)",
            all(d.samples_unaccounted == 0 for d in readers),
            f"{sum(d.samples for d in readers)} samples read by {len(readers)} devices that "
            f"publish readings, {sum(d.readings_stored for d in readers)} stored, "
            f"{sum(d.samples_unaccounted for d in readers)} unaccounted",
        )
    )
    c.invariants.append(
        Invariant(
            "every outbox drained by the end",
            c.total("left_in_outbox") == 0,
            f"{c.total('left_in_outbox')} records never delivered",
        )
    )
    c.invariants.append(
        Invariant(
            "no record stored twice",
            c.total("duplicates") == 0,
            f"{c.total('duplicates')} duplicate rows",
        )
    )
    c.invariants.append(
        Invariant(
            "a will (LWT) for every crash of an online device",
            c.total("wills_seen") == c.total("wills_expected"),
            f"{c.total('wills_seen')} of {c.total('wills_expected')} wills seen "
            f"({c.total('crashes')} crashes)",
        )
    )
    errors = [f"{d.device_id}: {d.error}" for d in c.devices if d.error]
    c.invariants.append(
        Invariant("every agent stopped cleanly", not errors, "; ".join(errors[:5]) or "yes")
    )
    ours = [a for a in cloud.assignments(limit=1000) if a.id not in earlier_assignments]
    c.invariants.append(check_assignments(ours))
    if bad:
        c.invariants.append(
            Invariant("every device accounted", False, f"failing devices: {', '.join(bad[:10])}")
        )
    return c
