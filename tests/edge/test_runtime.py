"""Runtimes on real converted models: LiteRT vs ONNX parity, int8 helpers, no TensorFlow."""

from __future__ import annotations

import subprocess
import sys

import msgspec
import numpy as np
import pytest
from support.tiny_models import IN_QUANT, OUT_QUANT, int8_io_model, make_bundle

from edgefleet.edge.errors import RuntimeUnavailable
from edgefleet.edge.runtime import dequantize, load_runtime, quantize
from edgefleet.protocol.bundle import verify_bundle, write_bundle
from edgefleet.protocol.manifest import QuantParams, TensorSpec
from edgefleet.runtime.litert import interpreter_class


@pytest.fixture(scope="module")
def bundles(tiny_zoo, signing_key, tmp_path_factory):
    root = tmp_path_factory.mktemp("rt")
    return {
        f: make_bundle(tiny_zoo, root / f, signing_key, fmt=f) for f in ("float", "int8", "onnx")
    }


def test_litert_and_onnx_agree_on_the_same_model(bundles, tiny_zoo):
    x = tiny_zoo.golden_inputs
    lite = load_runtime(bundles["float"].path, bundles["float"].manifest)
    onnx = load_runtime(bundles["onnx"].path, bundles["onnx"].manifest)
    assert (lite.name, onnx.name) == ("litert", "onnx")
    a = np.stack([lite.run(x[i : i + 1])[0].copy() for i in range(len(x))])
    b = np.stack([onnx.run(x[i : i + 1])[0].copy() for i in range(len(x))])
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(lite.run_batch(x), b, atol=1e-5)
    np.testing.assert_allclose(onnx.run_batch(x), b, atol=1e-5)
    # int8 inside the graph: close to float, not equal
    q = load_runtime(bundles["int8"].path, bundles["int8"].manifest)
    c = q.run_batch(x)
    assert np.max(np.abs(c - b)) < 0.25
    assert not np.array_equal(c, b)
    # a single run after a batch run still works (the input is resized back once)
    assert q.run(x[:1]).shape == (1, 2)


def test_run_feeds_matches_golden(bundles):
    for b in bundles.values():
        rt = load_runtime(b.path, b.manifest)
        golden = b.golden()
        out = rt.run_feeds({k: np.asarray(v, np.float32) for k, v in golden.inputs.items()})
        np.testing.assert_allclose(out["scores"], np.asarray(golden.outputs["scores"]), atol=1e-4)
        # the serving shape is back afterwards
        assert rt.run(np.zeros(rt.input_shape, np.float32)).shape == (1, 2)


def test_runtime_override_needs_a_matching_file(bundles):
    b = bundles["float"]
    with pytest.raises(RuntimeUnavailable, match=r"holds no \.onnx model"):
        load_runtime(b.path, b.manifest, override="onnx")
    with pytest.raises(RuntimeUnavailable, match="no runtime called"):
        load_runtime(b.path, b.manifest, override="tvm")


def test_corrupt_model_file_is_a_typed_error(bundles, tmp_path, trusted_pub):
    b = bundles["onnx"]
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    from edgefleet.runtime import RuntimeUnavailable
    from edgefleet.runtime.litert import LiteRtRuntime
    from edgefleet.runtime.onnx import OnnxRuntime

    with pytest.raises(RuntimeUnavailable):
        OnnxRuntime(bad, b.manifest)
    with pytest.raises(RuntimeUnavailable):
        LiteRtRuntime(bad, b.manifest)


def test_quantize_round_trip():
    q = QuantParams(scale=[0.05], zero_point=[-3])
    x = np.array([-1.0, 0.0, 0.5, 100.0], np.float32)
    qx = quantize(x, q)
    assert qx.dtype == np.int8
    assert qx[-1] == 127  # clipped
    np.testing.assert_allclose(dequantize(qx, q)[:3], x[:3], atol=0.025)
    per_axis = QuantParams(scale=[0.1, 0.2], zero_point=[0, 1], axis=1)
    y = quantize(np.ones((3, 2), np.float32), per_axis)
    assert y[:, 0].tolist() == [10, 10, 10]
    assert y[:, 1].tolist() == [6, 6, 6]


def test_litert_import_prefers_ai_edge_litert_and_never_tensorflow():
    assert interpreter_class().__module__.startswith("ai_edge_litert")
    code = (
        "import sys\n"
        "import edgefleet.edge.agent, edgefleet.edge.cli, edgefleet.runtime.litert as l\n"
        "l.interpreter_class()\n"
        "heavy = ('tensorflow', 'keras', 'flwr', 'fastapi', 'pandas')\n"
        "bad = [m for m in heavy if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_verified_bundle_loads(bundles, trusted_pub):
    from edgefleet.protocol.signing import load_public_key

    b = verify_bundle(bundles["int8"].path, [load_public_key(trusted_pub)])
    assert load_runtime(b.path, b.manifest).input_shape == (1, 32, 3)


@pytest.mark.parametrize("fmt", ["litert", "onnx"])
def test_int8_io_model_runs_on_floats(fmt, bundles, tiny_zoo, tmp_path):
    """Integer input/output tensors: Runtime.run quantizes in and dequantizes out."""
    model_file = "model.tflite" if fmt == "litert" else "model.onnx"
    path = int8_io_model(tiny_zoo, fmt, tmp_path / model_file)
    if fmt == "litert":
        it = interpreter_class()(model_path=str(path))
        io = [it.get_input_details()[0]["dtype"], it.get_output_details()[0]["dtype"]]
        assert io == [np.int8, np.int8]
    else:
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [sess.get_inputs()[0].type, sess.get_outputs()[0].type] == ["tensor(int8)"] * 2
    base = bundles["float" if fmt == "litert" else "onnx"].manifest
    # LiteRT: scales from the model file; ONNX (no scales in its tensor types): the manifest's.
    q_in, q_out = (None, None) if fmt == "litert" else (IN_QUANT, OUT_QUANT)
    manifest = msgspec.structs.replace(
        base,
        quantization="int8",
        inputs=[msgspec.structs.replace(base.inputs[0], dtype="int8", quantization=q_in)],
        outputs=[
            TensorSpec(name="scores", dtype="int8", shape=base.outputs[0].shape, quantization=q_out)
        ],
    )
    rt = load_runtime(tmp_path, manifest)
    float_rt = load_runtime(bundles["onnx"].path, bundles["onnx"].manifest)
    x = tiny_zoo.golden_inputs
    for i in range(len(x)):
        y = rt.run(x[i : i + 1])
        want = float_rt.run(x[i : i + 1])
        assert y.dtype == np.float32
        assert y.shape == (1, 2)
        # Scores, not raw int8 codes: in [0, 1], summing to about 1, close to the float model.
        assert np.all((y >= 0) & (y <= 1))
        assert abs(float(y.sum()) - 1.0) < 0.05
        assert np.max(np.abs(y - want)) < 0.25


def test_runtime_override_serves_the_other_model_file(bundles, tiny_zoo, signing_key, tmp_path):
    """``model.runtime = "onnx"`` on a LiteRT bundle that also ships an ONNX model file."""
    src = bundles["float"]
    dest = tmp_path / "both"
    dest.mkdir()
    for f in src.manifest.files:
        (dest / f.path).write_bytes((src.path / f.path).read_bytes())
    (dest / "model.onnx").write_bytes(tiny_zoo.onnx.read_bytes())
    both = write_bundle(dest, src.manifest, signing_key, roles={"model.onnx": "model"})
    default = load_runtime(both.path, both.manifest)
    override = load_runtime(both.path, both.manifest, override="onnx")
    assert (default.name, override.name) == ("litert", "onnx")
    x = tiny_zoo.golden_inputs
    np.testing.assert_allclose(override.run_batch(x), default.run_batch(x), atol=1e-5)
    golden = both.golden()
    assert golden is not None
    out = override.run_feeds({k: np.asarray(v, np.float32) for k, v in golden.inputs.items()})
    np.testing.assert_allclose(out["scores"], np.asarray(golden.outputs["scores"]), atol=1e-4)
