"""Agent pipeline (window, preprocess, infer, postprocess, queue) vs raw runtime calls, same run.

Builds the tiny dense model of the agent's tests (TensorFlow is used here only to make the
model), then times per window: (a) the raw runtime API on pre-made inputs (set input, invoke,
read output) and (b) the agent's Pipeline.process on chunks plus Uplink.add_results queueing.
The difference is what the agent adds per window.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from _common import emit
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.tiny_models import build_zoo, make_bundle  # type: ignore[import-not-found]

from edgefleet.edge.pipeline import Pipeline
from edgefleet.edge.runtime import load_runtime
from edgefleet.protocol.bundle import VerifiedBundle
from edgefleet.signals import make_signal

WINDOWS = 20_000
CHUNK_WINDOWS = 8
REPEATS = 5


def _raw_litert(path: Path, xs: np.ndarray) -> float:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    i, o = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]
    t0 = time.perf_counter()
    for x in xs:
        it.set_tensor(i, x)
        it.invoke()
        it.get_tensor(o)
    return (time.perf_counter() - t0) / len(xs)


def _raw_onnx(path: Path, xs: np.ndarray) -> float:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    s = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    out = [s.get_outputs()[0].name]
    t0 = time.perf_counter()
    for x in xs:
        s.run(out, {name: x})
    return (time.perf_counter() - t0) / len(xs)


def _pipeline(bundle: VerifiedBundle, data: np.ndarray) -> float:
    from edgefleet.edge.config import UplinkConfig
    from edgefleet.edge.outbox import Outbox
    from edgefleet.edge.sequencer import Sequencer
    from edgefleet.edge.uplink import Uplink
    from edgefleet.protocol.codec import JSON

    rt = load_runtime(bundle.path, bundle.manifest)
    pipe = Pipeline(rt, bundle.manifest, ("ax", "ay", "az"))
    tmp = Path(tempfile.mkdtemp())

    async def make() -> Uplink:
        return Uplink(
            UplinkConfig(),
            Outbox(tmp / "o.sqlite"),
            None,
            Sequencer(),
            JSON,
            fleet="bench",
            device_id="bench-1",
            db_executor=ThreadPoolExecutor(1),
        )

    up = asyncio.run(make())
    step = 32 * CHUNK_WINDOWS
    chunks = [data[i : i + step] for i in range(0, len(data), step)]
    t0 = time.perf_counter()
    n = 0
    for k, c in enumerate(chunks):
        res = pipe.process(k * step / 400.0, c, 400.0)
        up.add_results(pipe.model, pipe.model_version, res)
        n += len(res)
    elapsed = time.perf_counter() - t0
    assert n == WINDOWS, n
    return elapsed / n


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="edgefleet-bench-"))
    zoo = build_zoo(root / "zoo")
    key = Ed25519PrivateKey.generate()
    data = make_signal("vibration", seed=1, rate_hz=400.0).read(WINDOWS * 32)
    xs = ((data - np.array([0, 0, 1], np.float32)) / np.float32(0.1)).astype(np.float32)
    xs = xs.reshape(WINDOWS, 1, 32, 3)
    metrics: dict[str, float] = {}
    for fmt, label, raw in (
        ("int8", "litert", _raw_litert),
        ("onnx", "onnx", _raw_onnx),
        ("float", "litert_float", _raw_litert),
    ):
        b = make_bundle(zoo, root / fmt, key, fmt=fmt)
        raw_t = min(raw(b.model_path, xs) for _ in range(REPEATS))
        pipe_t = min(_pipeline(b, data) for _ in range(REPEATS))
        metrics[f"raw_us_{label}"] = round(raw_t * 1e6, 2)
        metrics[f"pipeline_us_{label}"] = round(pipe_t * 1e6, 2)
        metrics[f"pipeline_overhead_us_{label}"] = round((pipe_t - raw_t) * 1e6, 2)
        metrics[f"pipeline_over_raw_{label}"] = round(pipe_t / raw_t, 3)
    emit("edge_inference", metrics, ("ai-edge-litert", "onnxruntime", "numpy"))


if __name__ == "__main__":
    main()
