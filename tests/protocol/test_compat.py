"""The one bundle-fits-device rule: each mismatch named, old devices checked as far as known."""

from __future__ import annotations

import msgspec
import pytest

from edgefleet.protocol.compat import check_fit, require_fit
from edgefleet.protocol.errors import Incompatible
from edgefleet.protocol.manifest import BundleManifest, Postprocessing, Preprocessing, TensorSpec
from edgefleet.protocol.messages import DeviceProfile

ACTIVITY = BundleManifest(
    name="activity", version="1.0.0", runtime="litert", model_file="m.tflite",
    inputs=[TensorSpec(name="window", dtype="float32", shape=[-1, 64, 3])],
    outputs=[TensorSpec(name="probs", dtype="float32", shape=[-1, 4])],
    preprocessing=Preprocessing(
        kind="window", channels=["ax", "ay", "az"], window=64, hop=16, sample_rate_hz=50.0
    ),
    postprocessing=Postprocessing(kind="classify"),
    labels=["idle", "walk", "run", "fall"],
)  # fmt: skip
WRIST = DeviceProfile(
    channels=["ax", "ay", "az"], sample_rate_hz=50.0, runtimes=["litert", "onnx"],
    task="classify", labels=["fall", "idle", "run", "walk"],
)  # fmt: skip


def _codes(device: DeviceProfile | None, **kw: bool) -> list[str]:
    return [m.code for m in check_fit(ACTIVITY, device, **kw).mismatches]


def test_a_fitting_device_passes_and_label_order_does_not_matter() -> None:
    fit = require_fit(ACTIVITY, WRIST)
    assert fit.ok
    assert fit.unchecked == ()


def test_each_mismatch_is_named() -> None:
    pump = msgspec.structs.replace(WRIST, sample_rate_hz=400.0, task="anomaly", labels=[])
    fit = check_fit(ACTIVITY, pump)
    assert [m.code for m in fit.mismatches] == ["sample-rate", "task"]
    assert "50 Hz" in fit.describe()
    assert "1.28 s" in fit.describe()  # the window's span at the bundle's own rate
    assert _codes(msgspec.structs.replace(WRIST, sample_rate_hz=50.5)) == []  # within 2 %
    assert _codes(msgspec.structs.replace(WRIST, channels=["ax", "ay"])) == ["channels"]
    assert _codes(msgspec.structs.replace(WRIST, runtimes=["onnx"])) == ["runtime"]
    relabelled = msgspec.structs.replace(WRIST, labels=["idle", "walk", "run", "sit"])
    assert _codes(relabelled) == ["labels"]
    with pytest.raises(Incompatible, match="does not fit this device") as exc:
        require_fit(ACTIVITY, pump)
    assert exc.value.reason == "incompatible"


def test_a_task_change_needs_consent_a_physical_mismatch_never_passes() -> None:
    vib = msgspec.structs.replace(WRIST, task="anomaly", labels=[])
    assert _codes(vib) == ["task"]
    assert _codes(vib, allow_task_change=True) == []
    fast = msgspec.structs.replace(vib, sample_rate_hz=400.0)
    assert _codes(fast, allow_task_change=True) == ["sample-rate"]
    # A device that serves no model yet takes any task.
    assert _codes(msgspec.structs.replace(WRIST, task=None, labels=None)) == []


def test_what_an_old_device_does_not_report_is_unchecked_not_passed_silently() -> None:
    fit = check_fit(ACTIVITY, None)
    assert fit.ok
    assert set(fit.unchecked) == {"channels", "sample rate", "runtime", "task"}
    partial = check_fit(ACTIVITY, DeviceProfile(channels=["ax", "ay", "az"]))
    assert set(partial.unchecked) == {"sample rate", "runtime"}


def test_the_input_spec_must_be_what_the_preprocessing_makes() -> None:
    wrong = msgspec.structs.replace(
        ACTIVITY, inputs=[TensorSpec(name="window", dtype="float32", shape=[-1, 192])]
    )
    assert [m.code for m in check_fit(wrong, WRIST).mismatches] == ["input-spec"]
    assert check_fit(wrong, WRIST, input_spec=False).ok
