"""Each zoo model trains, converts to int8 LiteRT and ONNX, meets its parity bar and verifies."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from ai_edge_litert.interpreter import Interpreter
from scipy.stats import spearmanr
from support.models_zoo import MODEL_NAMES, RUNTIMES, Zoo

from edgefleet.protocol import signing
from edgefleet.protocol.bundle import VerifiedBundle, verify_bundle

pytestmark = pytest.mark.slow

CASES = [(n, r) for n in MODEL_NAMES for r in RUNTIMES]


def _verified(zoo: Zoo, name: str, runtime: str) -> VerifiedBundle:
    return verify_bundle(
        zoo.builds[name].bundle(runtime), [signing.load_public_key(zoo.public_key)]
    )


def _run_raw(bundle: VerifiedBundle, x: np.ndarray) -> np.ndarray:
    """Run one sample at a time with the runtime library itself, as a device would."""
    rows = []
    if bundle.manifest.runtime == "litert":
        interp = Interpreter(model_path=str(bundle.model_path), num_threads=1)
        interp.allocate_tensors()
        inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
        assert inp["name"] == bundle.manifest.inputs[0].name
        for row in x:
            interp.set_tensor(inp["index"], row[None].astype(np.float32))
            interp.invoke()
            rows.append(interp.get_tensor(out["index"]).copy())
    else:
        sess = ort.InferenceSession(str(bundle.model_path), providers=["CPUExecutionProvider"])
        name = bundle.manifest.inputs[0].name
        assert sess.get_inputs()[0].name == name
        for row in x:
            rows.append(sess.run(None, {name: row[None].astype(np.float32)})[0])
    return np.concatenate(rows)


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
    got = _run_raw(bundle, held["x_test"])
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
    got = _run_raw(bundle, x)
    assert got.shape == want.shape
    if spec.match == "argmax":
        assert (got.argmax(-1) == want.argmax(-1)).all()
        # Golden inputs are clear-cut, so the device's argmax cannot flip on rounding.
        top2 = np.sort(want, axis=-1)[:, -2:]
        assert (top2[:, 1] - top2[:, 0] >= 0.25).all()
    np.testing.assert_allclose(got, want, atol=spec.atol, rtol=spec.rtol)


def test_anomaly_bundle_outputs_the_score_and_a_threshold(zoo: Zoo) -> None:
    bundle = _verified(zoo, "vibration-anomaly", "litert")
    m = bundle.manifest
    assert m.postprocessing.kind == "anomaly"
    assert m.outputs[0].shape == [-1, 1]
    assert m.preprocessing.kind == "flatten"
    assert len(m.preprocessing.mean) == len(m.preprocessing.channels) == 3
    held = zoo.builds["vibration-anomaly"].heldout
    scores = _run_raw(bundle, held["x_test"]).reshape(-1)
    normal, faulty = scores[held["y_test"] == 0], scores[held["y_test"] == 1]
    assert m.postprocessing.threshold is not None
    assert (normal > m.postprocessing.threshold).mean() <= 0.02
    assert (faulty > m.postprocessing.threshold).mean() > (
        normal > m.postprocessing.threshold
    ).mean()


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
    np.testing.assert_allclose(_run_raw(made, x), _run_raw(original, x), atol=1e-6)
