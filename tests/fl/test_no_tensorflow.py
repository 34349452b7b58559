"""On a device there is no TensorFlow: LiteRT training and the ClientApp work without it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

BLOCKER = """
import importlib.abc, sys
class _NoTF(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "keras", "tf_keras"):
            raise ImportError(f"{name} is not installed on this device")
        return None
sys.meta_path.insert(0, _NoTF())
"""

SCRIPT = """
import json, sys
import numpy as np
try:
    import tensorflow
    print(json.dumps({"tf_importable": True})); sys.exit(0)
except ImportError:
    pass
from edgefleet.edge.fl.trainer import LiteRTTrainer
import edgefleet.edge.fl.clientapp  # the ClientApp (flwr) must not pull TensorFlow in either
t = LiteRTTrainer(open(sys.argv[1], "rb").read())
rng = np.random.default_rng(0)
x = rng.uniform(0, 16, (200, 64)).astype(np.float32)
y = (x[:, :8].sum(axis=1) > 64).astype(np.int64)
r = t.fit(x, y, epochs=5, lr=0.05)
print(json.dumps({"tf_importable": False, "before": r.loss_before, "after": r.loss_after,
                  "tf_loaded": any(m.split(".")[0] in ("tensorflow", "keras")
                                   for m in sys.modules)}))
"""


def test_litert_training_without_tensorflow(digits_trainable, tmp_path: Path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    model = tmp_path / "digits.tflite"
    model.write_bytes(digits_trainable.tflite)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(model)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["tf_importable"] is False
    assert result["tf_loaded"] is False
    assert np.isfinite(result["after"])
    assert result["after"] < result["before"]
