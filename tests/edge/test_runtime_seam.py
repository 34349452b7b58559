"""One runtime seam: the model zoo's runner and the agent serve a model with the same code."""

from __future__ import annotations

import ast
from pathlib import Path

import msgspec
import numpy as np
import pytest
from support.tiny_models import int8_io_model, make_bundle

import edgefleet.runtime as seam
from edgefleet.edge.errors import AgentError, RuntimeUnavailable
from edgefleet.edge.runtime import load_runtime
from edgefleet.models.errors import UnsupportedVariant
from edgefleet.models.runner import load_runner

ROOT = Path(__file__).resolve().parents[2]
# On-device training drives LiteRT's training signatures, which no inference seam serves.
TRAINING_INTERPRETER = "edge/edgefleet/edge/fl/trainer.py"


@pytest.fixture(scope="module")
def bundles(tiny_zoo, signing_key, tmp_path_factory):
    root = tmp_path_factory.mktemp("seam")
    return {
        f: make_bundle(tiny_zoo, root / f, signing_key, fmt=f) for f in ("float", "int8", "onnx")
    }


@pytest.mark.parametrize("fmt", ["float", "int8", "onnx"])
def test_the_zoo_and_the_agent_run_a_bundle_with_the_same_backend(fmt, bundles, tiny_zoo):
    b = bundles[fmt]
    agent = load_runtime(b.path, b.manifest)
    runner = load_runner(b.manifest.runtime, b.model_path)
    assert type(runner.runtime) is type(agent)
    assert type(agent).__module__ == f"edgefleet.runtime.{agent.name}"
    x = tiny_zoo.golden_inputs
    for i in range(len(x)):
        np.testing.assert_array_equal(runner.run(x[i : i + 1]), agent.run(x[i : i + 1]))
    # A whole batch: the runner resizes once and stays there; the agent's run_batch resizes
    # back to its serving shape. Same numbers either way.
    batch = runner.run(x)
    assert batch.shape == (len(x), 2)
    np.testing.assert_array_equal(batch, agent.run_batch(x))
    np.testing.assert_array_equal(runner.run(x), batch)
    np.testing.assert_array_equal(runner.run(x[:1]), agent.run(x[:1]))
    assert agent.input_shape[0] == 1


@pytest.mark.parametrize("fmt", ["litert", "onnx"])
def test_a_bare_model_file_states_its_specs_and_the_agent_serves_them(
    fmt, bundles, tiny_zoo, tmp_path
):
    """What the bundler writes into a manifest is what the file says; the agent then serves it."""
    model_file = "model.tflite" if fmt == "litert" else "model.onnx"
    path = int8_io_model(tiny_zoo, fmt, tmp_path / model_file)
    runner = load_runner(fmt, path)
    spec_in, spec_out = runner.input_spec, runner.output_spec
    assert (spec_in.dtype, spec_out.dtype) == ("int8", "int8")
    assert spec_in.shape[1:] == [32, 3]
    if fmt == "litert":
        # The converter's scales are in the file, so a manifest needs none of its own.
        assert spec_in.quantization is not None
        assert spec_out.quantization is not None
        base = bundles["float"].manifest
        manifest = msgspec.structs.replace(base, inputs=[spec_in], outputs=[spec_out])
        agent = load_runtime(tmp_path, manifest)
        x = tiny_zoo.golden_inputs[:1]
        y = runner.run(x)
        assert y.dtype == np.float32
        assert np.all((y >= 0) & (y <= 1))
        np.testing.assert_array_equal(y, agent.run(x))
    else:
        # ONNX tensor types carry no scales: the manifest must state them.
        assert spec_in.quantization is None


def test_each_side_gets_its_own_error_type(bundles, tmp_path):
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    b = bundles["float"]
    for f in b.manifest.files:
        (corrupt / f.path).write_bytes((b.path / f.path).read_bytes())
    (corrupt / b.manifest.model_file).write_bytes(b"not a model")
    with pytest.raises(seam.RuntimeUnavailable, match=r"LiteRT cannot load model\.tflite"):
        seam.open_model("litert", corrupt / b.manifest.model_file)
    # The agent's adapter keeps its error hierarchy and exit code for every load failure.
    for override in ("", "onnx", "tvm"):
        with pytest.raises(RuntimeUnavailable) as caught:
            load_runtime(corrupt, b.manifest, override=override)
        assert isinstance(caught.value, AgentError)
        assert caught.value.exit_code == 3
    with pytest.raises(UnsupportedVariant, match="unknown runtime 'tvm'"):
        load_runner("tvm", b.model_path)


def test_no_inference_backend_outside_the_seam():
    """Only edgefleet.runtime opens a LiteRT interpreter or an ONNX Runtime session."""
    found = []
    for folder in ("edge", "cloud", "models", "simulators", "firmware_bridge"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel.startswith("edge/edgefleet/runtime/") or rel == TRAINING_INTERPRETER:
                continue
            for node in ast.walk(ast.parse(path.read_text(), filename=rel)):
                named = (
                    node.attr
                    if isinstance(node, ast.Attribute)
                    else node.id
                    if isinstance(node, ast.Name)
                    else ""
                )
                imported = [a.name for a in node.names] if isinstance(node, ast.ImportFrom) else []
                if named in ("InferenceSession", "Interpreter") or "Interpreter" in imported:
                    found.append(f"{rel}:{node.lineno}")
    assert not found, f"inference outside edgefleet.runtime: {found}"
