"""Build each zoo model once per test run (shared by xdist workers) and cache its bundles.

TensorFlow training and conversion are the slow part of the model tests, so the first worker
that needs the zoo builds it under a file lock into the run's shared temp root; the others
wait for the lock and reuse the result. Tests then load the bundles with the device runtimes.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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


@dataclass(frozen=True)
class Zoo:
    """The shared keys and every model's build."""

    root: Path
    builds: dict[str, ZooBuild]

    @property
    def private_key(self) -> Path:
        """The signing key of every test bundle."""
        return self.root / "keys" / "edgefleet-signing.key"

    @property
    def public_key(self) -> Path:
        """The matching public key."""
        return self.root / "keys" / "edgefleet-signing.pub"


def _build(root: Path) -> None:
    from edgefleet.models.bundler import bundle_from_trained
    from edgefleet.models.training import train_model
    from edgefleet.protocol import signing

    priv, _ = signing.generate_keypair(root / "keys", overwrite=True)
    for name, epochs in TEST_EPOCHS.items():
        out = root / name
        trained = train_model(name, epochs=epochs, seed=0, small=True)
        trained.workdir = out / "convert"
        for runtime in RUNTIMES:
            bundle_from_trained(trained, out / f"bundle-{runtime}", priv, runtime=runtime)
        np.savez(
            out / "heldout.npz",
            x_test=trained.data.x_test,
            y_test=trained.data.y_test,
            keras=trained.test_outputs,
        )
        trained.save(out / "trained")
    (root / "done.json").write_text(json.dumps({"models": list(TEST_EPOCHS)}))


def shared_zoo(run_root: Path) -> Zoo:
    """The zoo built under ``run_root`` (built here first if no other worker has)."""
    root = run_root / "edgefleet-models-zoo"
    root.mkdir(parents=True, exist_ok=True)
    with open(run_root / "edgefleet-models-zoo.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not (root / "done.json").exists():
                _build(root)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return Zoo(root, {n: ZooBuild(n, root / n) for n in MODEL_NAMES})
