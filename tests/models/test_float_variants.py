"""Float32, float16 and dynamic-range bundles: they verify, record parity, reproduce goldens.

The zoo fixture builds int8 bundles only; these variants reuse its trained ``digits`` (the
cheapest model) and convert it once more per runtime and quantization.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support.models_zoo import Zoo, run_raw

from edgefleet.models.bundler import bundle_from_trained
from edgefleet.models.training import TrainedModel, load_trained
from edgefleet.protocol import signing
from edgefleet.protocol.bundle import verify_bundle

QUANTIZE = ("none", "float16", "dynamic")
RUNTIMES = ("litert", "onnx")
# How far each variant may stray from Keras in probability (softmax outputs in 0..1):
# float32 only by summation order; float16 weights by ~1e-3 relative; int8 weights more.
MAX_DIFF = {"none": 1e-4, "float16": 2e-2, "dynamic": 0.1}


@pytest.fixture(scope="module")
def digits_trained(zoo: Zoo, tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    """The zoo's trained digits model, with a private conversion cache for this module."""
    trained = load_trained(zoo.builds["digits"].trained_dir)
    trained.workdir = tmp_path_factory.mktemp("digits-float-convert")
    return trained


@pytest.mark.slow
@pytest.mark.parametrize("quantize", QUANTIZE)
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_float_variant_bundle_verifies_and_reproduces(
    zoo: Zoo, digits_trained: TrainedModel, tmp_path: Path, runtime: str, quantize: str
) -> None:
    bundle_from_trained(
        digits_trained,
        tmp_path / "bundle",
        zoo.private_key,
        runtime=runtime,  # type: ignore[arg-type]
        quantize=quantize,  # type: ignore[arg-type]
    )
    bundle = verify_bundle(tmp_path / "bundle", [signing.load_public_key(zoo.public_key)])
    m = bundle.manifest
    assert (m.runtime, m.quantization) == (runtime, quantize)
    assert m.inputs[0].dtype == m.outputs[0].dtype == "float32"
    assert m.inputs[0].quantization is None
    assert m.metrics["size_bytes"] == bundle.model_path.stat().st_size

    # Parity as recorded in the manifest is what the raw runtime reproduces here.
    held = zoo.builds["digits"].heldout
    got = run_raw(bundle, held["x_test"])
    agreement = float((got.argmax(-1) == held["keras"].argmax(-1)).mean())
    assert agreement >= 0.99
    assert agreement == pytest.approx(m.metrics["parity_top1_agreement"], abs=0.005)
    diff = float(np.max(np.abs(got - held["keras"])))
    assert diff == pytest.approx(m.metrics["parity_max_abs_diff"], abs=1e-3)
    assert diff <= MAX_DIFF[quantize]

    spec, vectors = m.golden, bundle.golden()
    assert spec is not None
    assert vectors is not None
    x = np.asarray(vectors.inputs[m.inputs[0].name], np.float32)
    want = np.asarray(vectors.outputs[m.outputs[0].name], np.float32)
    assert len(x) >= 4
    got_golden = run_raw(bundle, x)
    assert (got_golden.argmax(-1) == want.argmax(-1)).all()
    np.testing.assert_allclose(got_golden, want, atol=spec.atol, rtol=spec.rtol)
    if quantize == "none":
        # A float32 model is held to float rounding, not to int8 output steps.
        assert spec.atol <= 1e-3
