"""Package a trained zoo model as a signed bundle: convert, check parity, golden vectors, sign."""

from __future__ import annotations

import shutil
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Literal

import msgspec
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.models.base import Array
from edgefleet.models.card import CARD_FILE, render_card
from edgefleet.models.convert import MODEL_FILES, Quantize, RuntimeName, convert
from edgefleet.models.errors import GoldenMismatch, UnsupportedVariant
from edgefleet.models.parity import check_parity
from edgefleet.models.runner import Runner, load_runner
from edgefleet.models.trainable.spec import spec_from_keras
from edgefleet.models.trainable.weights import WEIGHTS_FILE, WEIGHTS_ROLE, write_weights
from edgefleet.models.training import Report, TrainedModel, from_weights, train_model
from edgefleet.protocol import signing
from edgefleet.protocol.bundle import VerifiedBundle, write_bundle
from edgefleet.protocol.errors import ConfigError
from edgefleet.protocol.manifest import (
    BundleManifest,
    GoldenSpec,
    GoldenVectors,
    Lineage,
    TensorSpec,
    encode_golden,
)

GOLDEN_FILE = "golden.json"
LABELS_FILE = "labels.txt"
GOLDEN_COUNT = 8
# A golden classifier input must win by this much so int8 rounding elsewhere cannot flip it.
GOLDEN_MIN_MARGIN = 0.25
TOOLS = ("edgefleet", "tensorflow", "keras", "ai-edge-litert", "onnx", "onnxruntime", "numpy")


def tool_versions() -> dict[str, str]:
    """Versions of the tools that trained and converted a model, for the lineage."""
    out = {}
    for name in TOOLS:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _key(key: Ed25519PrivateKey | Path | str) -> Ed25519PrivateKey:
    return key if isinstance(key, Ed25519PrivateKey) else signing.load_private_key(Path(key))


def _fresh_dir(out_dir: Path) -> Path:
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError(f"{out_dir} is not empty; give a new or empty directory for the bundle")
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def _tensor(spec: TensorSpec, shape: list[int]) -> TensorSpec:
    """The manifest's spec: name, dtype and quantization as the model file states them."""
    if spec.dtype == "float32":
        return TensorSpec(name=spec.name, dtype="float32", shape=shape)
    return msgspec.structs.replace(spec, shape=shape)


def run_one_by_one(runner: Runner, x: Array) -> Array:
    """Outputs for ``x`` run as a device runs it: one sample per call.

    Dynamic-range models quantize activations with each call's own range, so a whole-set
    batch would give other outputs (ONNX dynamic: up to 0.003 on digits) than the device.
    """
    return np.concatenate([runner.run(x[i : i + 1]) for i in range(len(x))])


def _golden_rows(trained: TrainedModel, outputs: Array) -> np.ndarray:
    """Held-out rows for the golden vectors: clear-cut ones, spread over classes or scores."""
    data = trained.data
    if trained.spec.task == "classify":
        top2 = np.sort(outputs, axis=-1)[:, -2:]
        clear = np.flatnonzero(top2[:, 1] - top2[:, 0] >= GOLDEN_MIN_MARGIN)
        rows: list[int] = []
        classes = outputs.argmax(axis=-1)
        for c in np.unique(classes[clear]):
            rows.extend(clear[classes[clear] == c][:2].tolist())
        return np.array(rows[:GOLDEN_COUNT] or [0])
    order = np.argsort(outputs.reshape(-1))
    picks = np.linspace(0, len(order) - 1, GOLDEN_COUNT).round().astype(int)
    del data
    return np.asarray(order[picks])


def _golden(
    trained: TrainedModel, runner: Runner, outputs: Array, quantized: bool
) -> tuple[GoldenVectors, GoldenSpec]:
    rows = _golden_rows(trained, outputs)
    x = trained.data.x_test[rows]
    y = run_one_by_one(runner, x)
    span = float(outputs.max() - outputs.min()) or 1.0
    # Another CPU may round an int8 requantization the other way: allow three output steps.
    atol = 3 * span / 255 if quantized else 1e-4 * max(1.0, span)
    match: Literal["allclose", "argmax"] = (
        "argmax" if trained.spec.task == "classify" else "allclose"
    )
    vectors = GoldenVectors(
        inputs={runner.input_name: x.tolist()}, outputs={runner.output_name: y.tolist()}
    )
    return vectors, GoldenSpec(file=GOLDEN_FILE, atol=atol, rtol=1e-3, match=match)


def _normal_scores(trained: TrainedModel, runner: Runner, outputs: Array) -> Array:
    """This runtime's outputs on the normal inputs the postprocessing threshold is set on."""
    data = trained.data
    if trained.spec.task != "anomaly":
        normal: Array = outputs[data.y_test == 0]  # classifiers take no threshold from it
        return normal
    if data.x_val is None or len(data.x_val) == 0:
        raise ConfigError(
            f"{trained.spec.name}: an anomaly model's dataset needs x_val (normal inputs of "
            "devices outside the training and held-out splits) to set its threshold"
        )
    return run_one_by_one(runner, data.x_val)


def _write_train_weights(trained: TrainedModel, out_dir: Path) -> bool:
    """Write the float weights of the trainable variant (dense, or head over a frozen base)."""
    try:
        spec = spec_from_keras(trained.spec.name, trained.spec.task, trained.keras_model)
    except UnsupportedVariant:
        return False  # convolutions cannot train in LiteRT: no trainable part to carry
    write_weights(out_dir / WEIGHTS_FILE, spec, trained.weights())
    return True


def bundle_from_trained(
    trained: TrainedModel,
    out_dir: Path,
    key: Ed25519PrivateKey | Path | str,
    *,
    runtime: RuntimeName = "litert",
    quantize: Quantize = "int8",
    version: str = "1.0.0",
    parent: str | None = None,
    lineage: Lineage | None = None,
    int8_io: bool = False,
    report: Report | None = None,
) -> VerifiedBundle:
    """Convert ``trained`` for ``runtime``/``quantize``, check parity, and write a signed bundle.

    Models with a trainable variant also get ``weights.npz`` (role ``train``):
    the float weights the int8 model was quantized from, where federated runs start.
    Raises :class:`~edgefleet.models.errors.ParityFailed` when the converted model misses
    its parity bar; nothing is signed then.
    """
    if runtime not in MODEL_FILES:
        raise UnsupportedVariant(f"runtime must be litert or onnx, not {runtime!r}")
    private = _key(key)
    out_dir = _fresh_dir(Path(out_dir))
    spec, data = trained.spec, trained.data
    say = report or (lambda stage, done, total: None)
    model_path = out_dir / MODEL_FILES[runtime]
    say("convert", 0, 1)
    scratch = Path(tempfile.mkdtemp(prefix="edgefleet-convert-"))
    try:
        convert(
            trained.inference_model,
            runtime,
            quantize,
            model_path,
            data.x_calib,
            workdir=trained.workdir or scratch,
            int8_io=int8_io,
            float_ops=spec.float_ops if runtime == "litert" and quantize == "int8" else (),
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    say("convert", 1, 1)
    say("parity", 0, 1)
    runner = load_runner(runtime, model_path)
    outputs = run_one_by_one(runner, data.x_test)
    parity = check_parity(spec.task, trained.test_outputs, outputs).require(
        f"{spec.name} {runtime}/{quantize}"
    )
    post = spec.postprocessing(_normal_scores(trained, runner, outputs))
    metrics = {
        **parity.metrics(),
        **spec.evaluate(outputs, data),
        **{f"keras_{k}": v for k, v in spec.evaluate(trained.test_outputs, data).items()},
        "size_bytes": float(model_path.stat().st_size),
        "epochs": float(trained.epochs),
    }
    if spec.task == "anomaly" and post.threshold is not None:
        # The threshold came from validation devices: how it does on unseen ones.
        flagged = outputs.reshape(-1) > post.threshold
        metrics["heldout_false_alarm_rate"] = float(flagged[data.y_test == 0].mean())
        metrics["heldout_detection_rate"] = float(flagged[data.y_test == 1].mean())
    vectors, golden = _golden(trained, runner, outputs, quantize != "none")
    (out_dir / GOLDEN_FILE).write_bytes(encode_golden(vectors))
    say("parity", 1, 1)
    base = lineage or Lineage()
    full_lineage = msgspec.structs.replace(
        base,
        parent=parent if parent is not None else base.parent,
        dataset=base.dataset or data.source,
        tools={**tool_versions(), **base.tools},
    )
    shape_in = [-1, *[int(d) for d in data.x_test.shape[1:]]]
    shape_out = [-1, *[int(d) for d in outputs.shape[1:]]]
    description = spec.summary
    if spec.task == "anomaly":
        description += " The output is the anomaly score; above the threshold is an anomaly."
    manifest = BundleManifest(
        name=spec.name,
        version=version,
        runtime=runtime,
        model_file=model_path.name,
        quantization=quantize,
        inputs=[_tensor(runner.input_spec, shape_in)],
        outputs=[_tensor(runner.output_spec, shape_out)],
        preprocessing=data.preprocessing,
        postprocessing=post,
        labels=list(spec.labels),
        metrics=metrics,
        lineage=full_lineage,
        golden=golden,
        description=description,
        created_at=time.time(),
    )
    roles: dict[str, str] = {CARD_FILE: "card"}
    if spec.labels:
        (out_dir / LABELS_FILE).write_text("\n".join(spec.labels) + "\n")
        roles[LABELS_FILE] = "labels"
    if _write_train_weights(trained, out_dir):
        roles[WEIGHTS_FILE] = WEIGHTS_ROLE
    (out_dir / CARD_FILE).write_text(render_card(spec, manifest))
    say("sign", 0, 1)
    bundle = write_bundle(out_dir, manifest, private, roles)  # type: ignore[arg-type]
    check_golden(bundle)
    say("sign", 1, 1)
    return bundle


def check_golden(bundle: VerifiedBundle) -> int:
    """Run a bundle's model on its golden inputs; raise :class:`GoldenMismatch` if off.

    Returns how many golden samples were checked.
    """
    spec, vectors = bundle.manifest.golden, bundle.golden()
    if spec is None or vectors is None:
        raise GoldenMismatch(f"{bundle.manifest.ref} has no golden vectors")
    runner = load_runner(bundle.manifest.runtime, bundle.model_path)
    x = np.asarray(vectors.inputs[runner.input_name], np.float32)
    want = np.asarray(vectors.outputs[runner.output_name], np.float32)
    got = run_one_by_one(runner, x)
    if spec.match == "argmax":
        ok = bool((got.argmax(axis=-1) == want.argmax(axis=-1)).all())
    else:
        ok = bool(np.allclose(got, want, atol=spec.atol, rtol=spec.rtol))
    if not ok:
        worst = float(np.max(np.abs(got - want)))
        raise GoldenMismatch(
            f"{bundle.manifest.ref} does not reproduce its golden vectors "
            f"({spec.match}, worst difference {worst:.3g}, atol {spec.atol:.3g})"
        )
    return len(x)


def build_bundle(
    name: str,
    out_dir: Path,
    key: Ed25519PrivateKey | Path | str,
    *,
    runtime: RuntimeName = "litert",
    quantize: Quantize = "int8",
    epochs: int | None = None,
    seed: int = 0,
    small: bool = False,
    version: str = "1.0.0",
    parent: str | None = None,
    lineage: Lineage | None = None,
    report: Report | None = None,
) -> VerifiedBundle:
    """Train zoo model ``name`` (seeded) and package it as a signed, verified bundle."""
    private = _key(key)
    _fresh_dir(Path(out_dir))  # fail before minutes of training, not after
    trained = train_model(name, epochs=epochs, seed=seed, small=small, report=report)
    return bundle_from_trained(
        trained,
        out_dir,
        private,
        runtime=runtime,
        quantize=quantize,
        version=version,
        parent=parent,
        lineage=lineage,
        report=report,
    )


def bundle_from_weights(
    name: str,
    weights: list[Array],
    out_dir: Path,
    key: Ed25519PrivateKey | Path | str,
    *,
    seed: int = 0,
    small: bool = False,
    runtime: RuntimeName = "litert",
    quantize: Quantize = "int8",
    version: str = "1.0.0",
    parent: str | None = None,
    lineage: Lineage | None = None,
) -> VerifiedBundle:
    """A bundle of zoo model ``name`` with given Keras weights (from on-device or FL training)."""
    trained = from_weights(name, weights, seed=seed, small=small)
    return bundle_from_trained(
        trained,
        out_dir,
        key,
        runtime=runtime,
        quantize=quantize,
        version=version,
        parent=parent,
        lineage=lineage,
    )
