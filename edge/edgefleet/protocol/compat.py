"""Whether a model bundle fits a device: the one rule the cloud and the agent both apply.

The cloud applies it to what a device reported in its birth (``Status.profile``) before it
sends an assignment; the agent applies it again to itself before it loads a bundle, because a
command may come from an older cloud, or a device may have changed since its birth. A device
that reports no profile (an agent older than the field) is checked as far as the cloud can,
and :attr:`Fit.unchecked` says what was not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from edgefleet.protocol.errors import Incompatible
from edgefleet.protocol.manifest import BundleManifest
from edgefleet.protocol.messages import DeviceProfile

# A serial MCU's clock drifts by a few per mille; a model trained at 50 Hz on 400 Hz data
# is off by a factor of 8. Two percent separates the two with room to spare.
RATE_TOLERANCE = 0.02


@dataclass(frozen=True, slots=True)
class Mismatch:
    """One way a bundle does not fit: a stable ``code`` and a sentence naming both sides."""

    code: str
    detail: str


@dataclass(frozen=True, slots=True)
class Fit:
    """The outcome of :func:`check_fit`: what does not fit, and what could not be checked."""

    mismatches: tuple[Mismatch, ...]
    unchecked: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """True when nothing that was checked stands in the way."""
        return not self.mismatches

    def describe(self) -> str:
        """The mismatches as one sentence per mismatch, joined by semicolons."""
        return "; ".join(m.detail for m in self.mismatches)


def bundle_problems(manifest: BundleManifest) -> list[Mismatch]:
    """What makes a bundle unusable by the agent's pipeline on any device (the input spec)."""
    pre, post = manifest.preprocessing, manifest.postprocessing
    out: list[Mismatch] = []

    def bad(detail: str) -> None:
        out.append(Mismatch("input-spec", detail))

    if not pre.channels:
        bad("preprocessing lists no channels")
    if pre.kind != "none" and pre.window <= 0:
        bad("preprocessing.window must be positive")
    for what, values in (("mean", pre.mean), ("std", pre.std)):
        if values and len(values) != len(pre.channels):
            bad(f"preprocessing.{what} needs one value per channel")
    if any(s == 0 for s in pre.std):
        bad("preprocessing.std holds a zero")
    spec = manifest.inputs[0]
    want = expected_input_shape(manifest)
    if list(spec.shape[1:]) != want:
        bad(
            f"input {spec.name!r} has shape {spec.shape}, but a {pre.kind} of {pre.window} x "
            f"{len(pre.channels)} channels gives [-1, " + ", ".join(map(str, want)) + "]"
        )
    if spec.dtype not in ("float32", "int8", "uint8"):
        bad(f"input dtype {spec.dtype} is not supported")
    if spec.dtype != "float32" and spec.quantization is None:
        bad(f"integer input {spec.name!r} has no quantization")
    out_spec = manifest.outputs[0]
    if post.kind == "classify" and manifest.labels and out_spec.shape[-1] != len(manifest.labels):
        bad(f"{len(manifest.labels)} labels for an output of shape {out_spec.shape}")
    return out


def expected_input_shape(manifest: BundleManifest) -> list[int]:
    """The input shape (without batch) the manifest's preprocessing produces."""
    pre = manifest.preprocessing
    width = len(pre.channels)
    if pre.kind == "window":
        return [pre.window, width]
    if pre.kind == "flatten":
        return [pre.window * width]
    return [width]


def check_fit(
    manifest: BundleManifest,
    device: DeviceProfile | None,
    *,
    allow_task_change: bool = False,
    input_spec: bool = True,
) -> Fit:
    """Check ``manifest`` against ``device``; ``input_spec`` adds :func:`bundle_problems`.

    Physical fit (channels, sample rate and so window length in seconds, runtime) cannot be
    overridden. A task change (another postprocessing kind or another label set than the
    model the device serves now) is refused unless ``allow_task_change``: whatever consumes
    the device's results (dashboards, Home Assistant, alert rules) expects that task.
    """
    out = list(bundle_problems(manifest)) if input_spec else []
    unchecked: list[str] = []
    d = device or DeviceProfile()
    pre = manifest.preprocessing
    if d.channels is None:
        unchecked.append("channels")
    else:
        missing = [c for c in pre.channels if c not in d.channels]
        if missing:
            out.append(
                Mismatch(
                    "channels",
                    f"the bundle needs channels {missing} that the device's source does not "
                    f"have (it has {list(d.channels)})",
                )
            )
    _check_rate(manifest, d, out, unchecked)
    if d.runtimes is None:
        unchecked.append("runtime")
    elif manifest.runtime not in d.runtimes:
        have = ", ".join(d.runtimes) or "none"
        out.append(
            Mismatch(
                "runtime",
                f"the bundle runs on {manifest.runtime}, which the device does not have "
                f"(it has {have})",
            )
        )
    if device is None:
        unchecked.append("task")
    elif d.task is not None and not allow_task_change:
        _check_task(manifest, d, out)
    return Fit(tuple(out), tuple(unchecked))


def _check_rate(
    manifest: BundleManifest, d: DeviceProfile, out: list[Mismatch], unchecked: list[str]
) -> None:
    pre = manifest.preprocessing
    want = pre.sample_rate_hz
    if want is None or d.sample_rate_hz is None:
        unchecked.append("sample rate")
        return
    have = d.sample_rate_hz
    if math.isclose(want, have, rel_tol=RATE_TOLERANCE):
        return
    window = ""
    if pre.kind != "none" and pre.window > 0:
        # The window is counted in samples: at another rate it spans another stretch of time.
        window = (
            f"; its window of {pre.window} samples would span {pre.window / have:.3g} s "
            f"instead of {pre.window / want:.3g} s"
        )
    out.append(
        Mismatch(
            "sample-rate",
            f"the bundle expects samples at {want:g} Hz, the device's source gives "
            f"{have:g} Hz{window}",
        )
    )


def _check_task(manifest: BundleManifest, d: DeviceProfile, out: list[Mismatch]) -> None:
    kind = manifest.postprocessing.kind
    if kind != d.task:
        out.append(
            Mismatch(
                "task",
                f"the bundle is a {kind} model, the device serves a {d.task} model now "
                "(assign with allow_task_change to repurpose it)",
            )
        )
    elif kind == "classify" and d.labels is not None and set(manifest.labels) != set(d.labels):
        out.append(
            Mismatch(
                "labels",
                f"the bundle's labels {list(manifest.labels)} are not the labels "
                f"{list(d.labels)} the device serves now (assign with allow_task_change to "
                "change them)",
            )
        )


def require_fit(
    manifest: BundleManifest,
    device: DeviceProfile | None,
    *,
    allow_task_change: bool = False,
    input_spec: bool = True,
) -> Fit:
    """:func:`check_fit`, raising :class:`Incompatible` naming every mismatch."""
    fit = check_fit(manifest, device, allow_task_change=allow_task_change, input_spec=input_spec)
    if not fit.ok:
        raise Incompatible(f"{manifest.ref} does not fit this device: {fit.describe()}")
    return fit


def profile_for(
    channels: Sequence[str] | None,
    sample_rate_hz: float | None,
    runtimes: Sequence[str] | None,
    serving: BundleManifest | None,
) -> DeviceProfile:
    """The profile of a device with this source and runtimes, serving ``serving`` (or nothing)."""
    task = labels = None
    if serving is not None:
        task = serving.postprocessing.kind
        labels = list(serving.labels)
    return DeviceProfile(
        channels=None if channels is None else list(channels),
        sample_rate_hz=sample_rate_hz,
        runtimes=None if runtimes is None else sorted(runtimes),
        task=task,
        labels=labels,
    )
