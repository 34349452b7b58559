"""``bench/models_convert.py`` runs (digits only, small, 2 epochs) and names its metrics."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "models_convert.py"
LABELS = ("litert_f32", "litert_int8", "litert_int8io", "onnx_f32", "onnx_int8")


@pytest.mark.slow(seconds=45)
def test_small_bench_reports_bundles_per_inference_latency_and_targets() -> None:
    args = ["--small", "--model", "digits", "--epochs", "2", "--runs", "20"]
    done = subprocess.run(
        [sys.executable, str(BENCH), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = json.loads(done.stdout.strip().splitlines()[-1])
    assert line["bench"] == "models_convert"
    m = line["metrics"]
    for label in LABELS:
        for suffix in ("bytes", "us_b1", "us_per_inf_b32", "us_per_call_b32", "agreement"):
            assert m[f"digits_{label}_{suffix}"] > 0, f"digits_{label}_{suffix}"
        # Per inference at batch 32 is the per-call time shared by the 32 samples.
        per_call, per_inf = (
            m[f"digits_{label}_us_per_call_b32"],
            m[f"digits_{label}_us_per_inf_b32"],
        )
        assert per_inf == pytest.approx(per_call / 32, abs=0.001)
        assert f"digits_{label}_us_b32" not in m  # the ambiguous key is gone
    # Whole bundles carry the same float weights for training whatever the model's variant.
    f32, int8 = m["digits_litert_f32_bundle_bytes"], m["digits_litert_int8_bundle_bytes"]
    assert f32 > m["digits_litert_f32_bytes"] + m["digits_weights_npz_bytes"]
    assert int8 > m["digits_litert_int8_bytes"] + m["digits_weights_npz_bytes"]
    assert m["digits_int8_bundle_size_ratio"] == pytest.approx(int8 / f32, abs=0.001)
    ratio = m["digits_litert_int8_bytes"] / m["digits_litert_f32_bytes"]
    assert m["digits_int8_size_ratio"] == pytest.approx(ratio, abs=0.001)
    assert m["digits_int8_bundle_size_ratio"] > m["digits_int8_size_ratio"]
    # The targets flag follows from the three figures it summarises.
    expected = (
        m["digits_int8_size_ratio"] <= 0.5
        and m["digits_int8_over_f32_latency"] <= 1.2
        and m["digits_int8_agreement"] >= 0.99
    )
    assert m["digits_int8_targets_met"] is expected
    assert "targets met" in done.stdout or "targets MISSED" in done.stdout
