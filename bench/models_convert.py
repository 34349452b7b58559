"""Benchmark the zoo's conversions: size, latency (batch 1 and 32) and accuracy per variant.

For each model, one training run feeds every variant: LiteRT float32, LiteRT int8 with float
I/O (quantize/dequantize inside the graph), LiteRT int8 with int8 I/O (quantized in numpy),
ONNX Runtime float32 and ONNX Runtime int8 (static QDQ). Latency is the median of timed
``run`` calls through the device runners (ai_edge_litert / onnxruntime, one thread), next to
the raw LiteRT ``set_tensor/invoke/get_tensor`` loop for the int8 model as a baseline. At
batch 32 both the time per call and per inference (call / 32) are reported.

The LiteRT float32 and int8 variants are also packaged as whole signed bundles (model,
golden vectors, card, labels, float ``weights.npz``, manifest, signature) and measured on disk,
and ``<model>_int8_targets_met`` checks the issue's bars (docs/models.md, "Measured").
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit

from edgefleet.models.benchmark import measure
from edgefleet.models.bundler import bundle_from_trained
from edgefleet.models.convert import Quantize, RuntimeName, convert
from edgefleet.models.parity import Parity, check_parity
from edgefleet.models.runner import load_runner
from edgefleet.models.training import TrainedModel, train_model
from edgefleet.models.zoo import model_names
from edgefleet.protocol import signing

# The bars for the int8 LiteRT variant against LiteRT float32 (parity bars: parity.py).
MAX_SIZE_RATIO = 0.5
MAX_LATENCY_RATIO = 1.2

# (label, runtime, quantize, int8 I/O)
VARIANTS: list[tuple[str, RuntimeName, Quantize, bool]] = [
    ("litert_f32", "litert", "none", False),
    ("litert_int8", "litert", "int8", False),
    ("litert_int8io", "litert", "int8", True),
    ("onnx_f32", "onnx", "none", False),
    ("onnx_int8", "onnx", "int8", False),
]


def _raw_litert_us(path: Path, x: np.ndarray, runs: int) -> float:
    """Median µs of the bare LiteRT loop on one sample (the library without our runner)."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=1)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    sample = x[:1].astype(inp["dtype"]) if inp["dtype"] != np.float32 else x[:1]
    times = []
    for i in range(runs + 20):
        t0 = time.perf_counter_ns()
        interp.set_tensor(inp["index"], sample)
        interp.invoke()
        interp.get_tensor(out["index"])
        if i >= 20:
            times.append(time.perf_counter_ns() - t0)
    return float(np.median(times) / 1000)


def _bundle_bytes(directory: Path) -> int:
    """Bytes on disk of every file of a bundle (what a device downloads, unpacked)."""
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def bench_bundles(trained: TrainedModel, work: Path) -> dict[str, Any]:
    """Build the LiteRT float32 and int8 bundles of ``trained`` and measure them whole."""
    key = trained.spec.name.replace("-", "_")
    signing.generate_keypair(work / "keys", overwrite=True)
    private = work / "keys" / "edgefleet-signing.key"
    out: dict[str, Any] = {}
    for label, quantize in (("litert_f32", "none"), ("litert_int8", "int8")):
        bundle = bundle_from_trained(
            trained,
            work / f"{key}_{label}_bundle",
            private,
            runtime="litert",
            quantize=quantize,  # type: ignore[arg-type]
        )
        out[f"{key}_{label}_bundle_bytes"] = _bundle_bytes(bundle.path)
        weights = bundle.path / "weights.npz"
        out[f"{key}_weights_npz_bytes"] = weights.stat().st_size if weights.exists() else 0
    out[f"{key}_int8_bundle_size_ratio"] = round(
        out[f"{key}_litert_int8_bundle_bytes"] / out[f"{key}_litert_f32_bundle_bytes"], 3
    )
    return out


def targets_met(out: dict[str, Any], key: str, parity: Parity) -> bool:
    """Whether int8 LiteRT meets the issue's bars: model file size, latency, parity."""
    return bool(
        out[f"{key}_int8_size_ratio"] <= MAX_SIZE_RATIO
        and out[f"{key}_int8_over_f32_latency"] <= MAX_LATENCY_RATIO
        and parity.passed
    )


def bench_model(trained: TrainedModel, work: Path, runs: int) -> dict[str, Any]:
    """Convert ``trained`` to every variant and measure it."""
    spec, data = trained.spec, trained.data
    key = spec.name.replace("-", "_")
    trained.workdir = work / key
    out: dict[str, Any] = {}
    rows = []
    int8_parity: Parity | None = None
    for label, runtime, quantize, int8_io in VARIANTS:
        path = work / f"{key}_{label}.{'tflite' if runtime == 'litert' else 'onnx'}"
        float_ops = spec.float_ops if runtime == "litert" and quantize == "int8" else ()
        if int8_io and float_ops:
            continue  # a float score after the int8 body cannot have int8 output
        convert(
            trained.inference_model,
            runtime,
            quantize,
            path,
            data.x_calib,
            workdir=work / key,
            int8_io=int8_io,
            float_ops=float_ops,
        )
        runner = load_runner(runtime, path)
        outputs = runner.run(data.x_test)
        parity = check_parity(spec.task, trained.test_outputs, outputs)
        if label == "litert_int8":
            int8_parity = parity
        quality = spec.evaluate(outputs, data)
        b1 = measure(load_runner(runtime, path), data.x_test[:1], runs=runs)
        b32 = measure(load_runner(runtime, path), data.x_test[:32], runs=max(runs // 4, 20))
        size = path.stat().st_size
        out[f"{key}_{label}_bytes"] = size
        out[f"{key}_{label}_us_b1"] = round(b1.p50_us, 2)
        # Per inference is comparable with batch 1; per call is what one run() costs.
        out[f"{key}_{label}_us_per_inf_b32"] = round(b32.per_sample_us, 3)
        out[f"{key}_{label}_us_per_call_b32"] = round(b32.p50_us, 2)
        out[f"{key}_{label}_agreement"] = round(parity.value, 4)
        for name, value in quality.items():
            out[f"{key}_{label}_{name}"] = round(value, 4)
        rows.append((label, size, b1.p50_us, b32.per_sample_us, parity.value, quality))
        if label == "litert_int8":
            out[f"{key}_litert_int8_raw_invoke_us"] = round(
                _raw_litert_us(path, data.x_test, runs), 2
            )
    for label, size, us1, us32, agree, quality in rows:
        print(
            f"{spec.name:18s} {label:14s} {size:8d} B  b1 {us1:8.1f} µs  "
            f"b32 {us32:7.2f} µs/inference  parity {agree:.4f}  {quality}"
        )
    out.update(bench_bundles(trained, work))
    out[f"{key}_int8_size_ratio"] = round(
        out[f"{key}_litert_int8_bytes"] / out[f"{key}_litert_f32_bytes"], 3
    )
    out[f"{key}_int8_over_f32_latency"] = round(
        out[f"{key}_litert_int8_us_b1"] / out[f"{key}_litert_f32_us_b1"], 3
    )
    out[f"{key}_int8_agreement"] = out[f"{key}_litert_int8_agreement"]
    assert int8_parity is not None
    out[f"{key}_int8_targets_met"] = targets_met(out, key, int8_parity)
    print(
        f"{spec.name:18s} int8/f32 model file {out[f'{key}_int8_size_ratio']:.3f} "
        f"(bundle {out[f'{key}_int8_bundle_size_ratio']:.3f}), latency "
        f"{out[f'{key}_int8_over_f32_latency']:.3f}, {int8_parity.measure} "
        f"{int8_parity.value:.4f}: targets {'met' if out[f'{key}_int8_targets_met'] else 'MISSED'}"
    )
    return out


def main() -> None:
    """Train each zoo model once, convert it every way, and print the JSON result line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=400, help="timed runs at batch 1")
    parser.add_argument("--small", action="store_true", help="small datasets (quick check)")
    parser.add_argument(
        "--model", action="append", choices=model_names(), help="only this model (repeatable)"
    )
    parser.add_argument("--epochs", type=int, help="training epochs (default: each model's)")
    args = parser.parse_args()
    metrics: dict[str, Any] = {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.model or model_names():
            trained = train_model(name, seed=0, small=args.small, epochs=args.epochs)
            metrics[f"{name.replace('-', '_')}_train_s"] = round(trained.train_seconds, 1)
            metrics.update(bench_model(trained, Path(tmp), args.runs))
    metrics["total_s"] = round(time.perf_counter() - start, 1)
    metrics["load_avg_1m"] = round(os.getloadavg()[0], 2)
    emit(
        "models_convert",
        metrics,
        ("tensorflow", "keras", "ai-edge-litert", "onnxruntime", "onnx", "scikit-learn"),
    )


if __name__ == "__main__":
    main()
