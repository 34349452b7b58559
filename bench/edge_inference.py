"""Agent pipeline (window, preprocess, infer, postprocess, queue) vs raw runtime calls, same run.

Times per window: (a) the raw runtime API on pre-made inputs (set input, invoke, read
output; for LiteRT the interpreter's native methods, as the agent's runtime calls them, and
also the Python wrappers, reported as ``raw_wrappers_us_*``) and (b) the agent's
Pipeline.process on chunks plus Uplink.add_results queueing. The difference is what the agent
adds per window. First on the tiny dense model of the agent's tests (int8 and float LiteRT,
ONNX; the headline metrics), then on the reference sensor models of the zoo,
vibration-anomaly and activity, trained small here (TensorFlow is used only to make the
models). digits is left out: it classifies 8x8 images, not windows of a sensor stream, so no
agent pipeline serves it.
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
REFERENCE_WINDOWS = 4_000
CHUNK_WINDOWS = 8
REPEATS = 5


def _raw_litert(path: Path, xs: np.ndarray, *, native: bool = True) -> float:
    """Set input, invoke, read output; ``native`` calls the methods the agent's runtime calls.

    The Python wrappers (``set_tensor``/``invoke``/``get_tensor``) check arguments and cost
    microseconds per call; the agent skips them, so the fair baseline skips them too.
    """
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    i, o = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]
    if native:
        nat = it._interpreter
        t0 = time.perf_counter()
        for x in xs:
            nat.SetTensor(i, x)
            nat.Invoke()
            nat.GetTensor(o, 0)
        elapsed = time.perf_counter() - t0
        del nat  # LiteRT counts references to the native object
    else:
        t0 = time.perf_counter()
        for x in xs:
            it.set_tensor(i, x)
            it.invoke()
            it.get_tensor(o)
        elapsed = time.perf_counter() - t0
    return elapsed / len(xs)


def _raw_litert_wrappers(path: Path, xs: np.ndarray) -> float:
    return _raw_litert(path, xs, native=False)


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


def _pipeline(bundle: VerifiedBundle, data: np.ndarray, rate_hz: float) -> float:
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
    step = pipe.hop * CHUNK_WINDOWS
    chunks = [data[i : i + step] for i in range(0, len(data), step)]
    t0 = time.perf_counter()
    n = 0
    for k, c in enumerate(chunks):
        res = pipe.process(k * step / rate_hz, c, rate_hz)
        up.add_results(pipe.model, pipe.model_version, res)
        n += len(res)
    elapsed = time.perf_counter() - t0
    assert n > 0.9 * len(data) / pipe.hop, n
    return elapsed / n


def _inputs(bundle: VerifiedBundle, data: np.ndarray) -> np.ndarray:
    """The windows the pipeline makes of ``data``, preprocessed, in the model's input shape."""
    pre = bundle.manifest.preprocessing
    x = (data - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    hop = pre.hop or pre.window
    starts = range(0, len(x) - pre.window + 1, hop)
    shape = (1, *bundle.manifest.inputs[0].shape[1:])
    return np.stack([x[s : s + pre.window].reshape(shape) for s in starts]).astype(np.float32)


def _measure(
    metrics: dict[str, float], label: str, bundle: VerifiedBundle, data: np.ndarray, rate: float
) -> None:
    raw = _raw_onnx if bundle.manifest.runtime == "onnx" else _raw_litert
    litert = bundle.manifest.runtime != "onnx"
    xs = _inputs(bundle, data)
    raw_t = pipe_t = wrapped = float("inf")
    # Interleaved, best of REPEATS each: on a shared host the load changes during a run, and
    # measuring all of one side first would charge that change to the difference.
    for _ in range(REPEATS):
        raw_t = min(raw_t, raw(bundle.model_path, xs))
        pipe_t = min(pipe_t, _pipeline(bundle, data, rate))
        if litert:
            wrapped = min(wrapped, _raw_litert_wrappers(bundle.model_path, xs))
    metrics[f"raw_us_{label}"] = round(raw_t * 1e6, 2)
    if litert:
        metrics[f"raw_wrappers_us_{label}"] = round(wrapped * 1e6, 2)
    metrics[f"pipeline_us_{label}"] = round(pipe_t * 1e6, 2)
    metrics[f"pipeline_overhead_us_{label}"] = round((pipe_t - raw_t) * 1e6, 2)
    metrics[f"pipeline_over_raw_{label}"] = round(pipe_t / raw_t, 3)


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="edgefleet-bench-"))
    zoo = build_zoo(root / "zoo")
    key = Ed25519PrivateKey.generate()
    data = make_signal("vibration", seed=1, rate_hz=400.0).read(WINDOWS * 32)
    metrics: dict[str, float] = {}
    for fmt, label in (("int8", "litert"), ("onnx", "onnx"), ("float", "litert_float")):
        _measure(metrics, label, make_bundle(zoo, root / fmt, key, fmt=fmt), data, 400.0)

    from edgefleet.models.bundler import bundle_from_trained
    from edgefleet.models.training import train_model
    from edgefleet.simulators.bundles import EPOCHS

    for name, signal in (("vibration-anomaly", "vibration"), ("activity", "activity")):
        trained = train_model(name, epochs=EPOCHS[name], seed=0, small=True)
        for runtime in ("litert", "onnx"):
            trained.workdir = root / name / runtime
            bundle = bundle_from_trained(trained, root / name / f"bundle-{runtime}", key,
                                         runtime=runtime)  # fmt: skip
            pre = bundle.manifest.preprocessing
            rate = pre.sample_rate_hz or 100.0
            stream = make_signal(signal, seed=1, rate_hz=rate).read(
                REFERENCE_WINDOWS * (pre.hop or pre.window)
            )
            _measure(metrics, f"{runtime}_{name.replace('-', '_')}", bundle, stream, rate)
    emit("edge_inference", metrics, ("ai-edge-litert", "onnxruntime", "numpy"))


if __name__ == "__main__":
    main()
