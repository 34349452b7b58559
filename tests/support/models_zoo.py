"""Build each zoo model once per test run (shared by xdist workers) and cache its bundles.

TensorFlow training and conversion are the slow part of the model tests, so the first worker
that needs a model builds it under that model's file lock into the run's shared temp root;
the others wait for the lock and reuse the result. A model is built when a test first asks
for it (``zoo.builds[name]``): the federated tests, which start first, wait only for the
vibration model, not for the whole zoo. Tests then load the bundles with the device runtimes.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgefleet.protocol.bundle import VerifiedBundle

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Few epochs and the small datasets: enough to meet every parity bar, fast on 2 cores.
TEST_EPOCHS = {"digits": 30, "activity": 4, "vibration-anomaly": 15}
RUNTIMES = ("litert", "onnx")
MODEL_NAMES = tuple(TEST_EPOCHS)


@dataclass(frozen=True)
class ZooBuild:
    """Where one model's test artefacts are: bundles per runtime, held-out data, weights."""

    name: str
    root: Path

    def bundle(self, runtime: str) -> Path:
        """The int8 bundle directory for ``runtime``."""
        return self.root / f"bundle-{runtime}"

    @property
    def heldout(self) -> dict[str, np.ndarray]:
        """x_test, y_test and the Keras outputs on x_test."""
        with np.load(self.root / "heldout.npz") as z:
            return {k: z[k] for k in z.files}

    @property
    def trained_dir(self) -> Path:
        """Saved weights and metadata (for load_trained)."""
        return self.root / "trained"


class LazyBuilds(Mapping[str, ZooBuild]):
    """The zoo's models by name; looking one up builds it first if no worker has."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __getitem__(self, name: str) -> ZooBuild:
        if name not in TEST_EPOCHS:
            raise KeyError(name)
        out = self.root / name
        with _locked(self.root / f"{name}.lock"):
            if not (out / "done").exists():
                _build(name, out, self.root / "keys" / "edgefleet-signing.key")
                (out / "done").touch()
        return ZooBuild(name, out)

    def __iter__(self) -> Iterator[str]:
        return iter(MODEL_NAMES)

    def __len__(self) -> int:
        return len(MODEL_NAMES)


@dataclass(frozen=True)
class Zoo:
    """The shared keys and every model's build."""

    root: Path
    builds: LazyBuilds

    @property
    def private_key(self) -> Path:
        """The signing key of every test bundle."""
        return self.root / "keys" / "edgefleet-signing.key"

    @property
    def public_key(self) -> Path:
        """The matching public key."""
        return self.root / "keys" / "edgefleet-signing.pub"


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _build(name: str, out: Path, key: Path) -> None:
    from edgefleet.models.bundler import bundle_from_trained
    from edgefleet.models.training import train_model

    trained = train_model(name, epochs=TEST_EPOCHS[name], seed=0, small=True)
    trained.workdir = out / "convert"
    for runtime in RUNTIMES:
        bundle_from_trained(trained, out / f"bundle-{runtime}", key, runtime=runtime)
    np.savez(
        out / "heldout.npz",
        x_test=trained.data.x_test,
        y_test=trained.data.y_test,
        keras=trained.test_outputs,
    )
    trained.save(out / "trained")


def run_raw(bundle: VerifiedBundle, x: np.ndarray) -> np.ndarray:
    """Run ``x`` one sample at a time with the runtime library itself, as a device would."""
    rows = []
    if bundle.manifest.runtime == "litert":
        from ai_edge_litert.interpreter import Interpreter

        interp = Interpreter(model_path=str(bundle.model_path), num_threads=1)
        interp.allocate_tensors()
        inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
        assert inp["name"] == bundle.manifest.inputs[0].name
        for row in x:
            interp.set_tensor(inp["index"], row[None].astype(np.float32))
            interp.invoke()
            rows.append(interp.get_tensor(out["index"]).copy())
    else:
        import onnxruntime as ort

        sess = ort.InferenceSession(str(bundle.model_path), providers=["CPUExecutionProvider"])
        name = bundle.manifest.inputs[0].name
        assert sess.get_inputs()[0].name == name
        for row in x:
            rows.append(sess.run(None, {name: row[None].astype(np.float32)})[0])
    return np.concatenate(rows)


def shared_zoo(run_root: Path) -> Zoo:
    """The zoo under ``run_root``: its keys now, each model when a test first asks for it."""
    from edgefleet.protocol import signing

    root = run_root / "edgefleet-models-zoo"
    root.mkdir(parents=True, exist_ok=True)
    with _locked(run_root / "edgefleet-models-zoo.lock"):
        if not (root / "keys" / "edgefleet-signing.pub").exists():
            signing.generate_keypair(root / "keys", overwrite=True)
    return Zoo(root, LazyBuilds(root))
