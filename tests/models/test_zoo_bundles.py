"""Each zoo model trains, converts to int8 LiteRT and ONNX, meets its parity bar and verifies."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr
from support.models_zoo import MODEL_NAMES, RUNTIMES, Zoo, run_raw

from edgefleet.protocol import signing
from edgefleet.protocol.bundle import VerifiedBundle, verify_bundle

pytestmark = pytest.mark.slow

CASES = [(n, r) for n in MODEL_NAMES for r in RUNTIMES]


def _verified(zoo: Zoo, name: str, runtime: str) -> VerifiedBundle:
    return verify_bundle(
        zoo.builds[name].bundle(runtime), [signing.load_public_key(zoo.public_key)]
    )


@pytest.mark.parametrize(("name", "runtime"), CASES)
def test_bundle_verifies_and_describes_the_model(zoo: Zoo, name: str, runtime: str) -> None:
    bundle = _verified(zoo, name, runtime)
    m = bundle.manifest
    assert (m.name, m.runtime, m.quantization, m.version) == (name, runtime, "int8", "1.0.0")
    assert bundle.model_path.suffix == (".tflite" if runtime == "litert" else ".onnx")
    roles = {f.role for f in m.files}
    assert {"model", "golden", "card"} <= roles
    assert m.lineage.tools["tensorflow"]
    assert m.lineage.tools["onnxruntime"]
    assert m.lineage.dataset
    card = (bundle.path / "MODEL_CARD.md").read_text()
    parity_key = next(k for k in m.metrics if k.startswith("parity_") and k.endswith("_bar"))
    assert f"{m.metrics[parity_key[:-4]]:.6g}" in card
    held = zoo.builds[name].heldout
    assert m.inputs[0].shape == [-1, *held["x_test"].shape[1:]]
    assert m.inputs[0].dtype == "float32"  # int8 lives inside the graph (float I/O)


@pytest.mark.parametrize(("name", "runtime"), CASES)
def test_int8_conversion_meets_its_parity_bar(zoo: Zoo, name: str, runtime: str) -> None:
    bundle = _verified(zoo, name, runtime)
    held = zoo.builds[name].heldout
    got = run_raw(bundle, held["x_test"])
    if bundle.manifest.postprocessing.kind == "classify":
        value = float((got.argmax(-1) == held["keras"].argmax(-1)).mean())
        assert value >= 0.99
        assert bundle.manifest.metrics["parity_top1_agreement"] >= 0.99
    else:
        value = float(spearmanr(got.reshape(-1), held["keras"].reshape(-1)).statistic)
        assert value >= 0.98
        assert bundle.manifest.metrics["parity_spearman"] >= 0.98
        # The score separates injected faults from normal windows better than chance.
        assert bundle.manifest.metrics["roc_auc"] > 0.6
    # The manifest's figure is what this runtime reproduces here.
    key = (
        "parity_top1_agreement"
        if "parity_top1_agreement" in bundle.manifest.metrics
        else ("parity_spearman")
    )
    assert value == pytest.approx(bundle.manifest.metrics[key], abs=0.005)


@pytest.mark.parametrize(("name", "runtime"), CASES)
def test_golden_vectors_reproduce_with_the_runtime(zoo: Zoo, name: str, runtime: str) -> None:
    bundle = _verified(zoo, name, runtime)
    spec, vectors = bundle.manifest.golden, bundle.golden()
    assert spec is not None
    assert vectors is not None
    x = np.asarray(vectors.inputs[bundle.manifest.inputs[0].name], np.float32)
    want = np.asarray(vectors.outputs[bundle.manifest.outputs[0].name], np.float32)
    assert len(x) >= 4
    got = run_raw(bundle, x)
    assert got.shape == want.shape
    if spec.match == "argmax":
        assert (got.argmax(-1) == want.argmax(-1)).all()
        # Golden inputs are clear-cut, so the device's argmax cannot flip on rounding.
        top2 = np.sort(want, axis=-1)[:, -2:]
        assert (top2[:, 1] - top2[:, 0] >= 0.25).all()
    np.testing.assert_allclose(got, want, atol=spec.atol, rtol=spec.rtol)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_anomaly_threshold_is_set_on_validation_devices_and_holds_out(
    zoo: Zoo, runtime: str
) -> None:
    from edgefleet.models.vibration_anomaly import THRESHOLD_QUANTILE, VibrationAnomaly

    bundle = _verified(zoo, "vibration-anomaly", runtime)
    m = bundle.manifest
    assert m.postprocessing.kind == "anomaly"
    assert m.outputs[0].shape == [-1, 1]
    assert m.preprocessing.kind == "flatten"
    assert len(m.preprocessing.mean) == len(m.preprocessing.channels) == 3
    threshold = m.postprocessing.threshold
    assert threshold is not None
    # The threshold comes from this runtime's scores on validation devices' normal windows ...
    data = VibrationAnomaly().dataset(0, small=True)
    assert data.x_val is not None
    held = zoo.builds["vibration-anomaly"].heldout
    assert not np.isin(data.x_val[:, 0], held["x_test"][:, 0]).any()
    val_scores = run_raw(bundle, data.x_val).reshape(-1)
    assert threshold == pytest.approx(float(np.quantile(val_scores, THRESHOLD_QUANTILE)), rel=1e-5)
    # ... so the held-out devices (never seen in training or thresholding) can fail it.
    scores = run_raw(bundle, held["x_test"]).reshape(-1)
    normal, faulty = scores[held["y_test"] == 0], scores[held["y_test"] == 1]
    false_alarms = float((normal > threshold).mean())
    detected = float((faulty > threshold).mean())
    assert false_alarms <= 0.05
    assert detected > false_alarms + 0.1
    assert m.metrics["heldout_false_alarm_rate"] == pytest.approx(false_alarms, abs=1e-9)
    assert m.metrics["heldout_detection_rate"] == pytest.approx(detected, abs=1e-9)


def test_bundle_from_keras_weights_reproduces_the_model(zoo: Zoo, tmp_path) -> None:
    from edgefleet.models.bundler import bundle_from_weights
    from edgefleet.models.training import load_trained

    build = zoo.builds["digits"]
    weights = load_trained(build.trained_dir).weights()
    made = bundle_from_weights(
        "digits",
        weights,
        tmp_path / "b",
        zoo.private_key,
        small=True,
        version="1.1.0",
        parent="digits@1.0.0",
    )
    assert made.manifest.lineage.parent == "digits@1.0.0"
    original = _verified(zoo, "digits", "litert")
    x = build.heldout["x_test"][:50]
    np.testing.assert_allclose(run_raw(made, x), run_raw(original, x), atol=1e-6)
