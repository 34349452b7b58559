"""TensorFlow's log noise (absl ``I0000``/``E0000 ... cuInit`` lines) is kept off stderr unless
``--verbose``; with it, TensorFlow's own settings are left alone.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from edgefleet import cli
from edgefleet.models import tfquiet
from edgefleet.protocol.signing import generate_keypair

# Builds a zoo model and runs it once: the import and the first op, where cuInit is tried.
_BUILD_AND_RUN = """
import logging, os
import numpy as np
from edgefleet.models.zoo import get_model
model = get_model("digits").build(0)
model.predict(np.zeros((1,) + tuple(model.input_shape[1:]), np.float32), verbose=0)
print("level", os.environ.get("TF_CPP_MIN_LOG_LEVEL"))
print("absl", logging.getLogger("absl").level)
"""
_ABSL_LINE = re.compile(r"^[IWE]\d{4} \d\d:\d\d:\d\d", re.M)


def _run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL",)}
    clean.pop(tfquiet.VERBOSE_ENV, None)
    return subprocess.run(
        [sys.executable, "-c", _BUILD_AND_RUN],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    )


@pytest.mark.slow(seconds=30)
def test_building_a_model_prints_no_tensorflow_log_lines() -> None:
    out = _run({})
    assert "cuInit" not in out.stderr
    assert not _ABSL_LINE.search(out.stderr), out.stderr
    assert "absl::InitializeLog" not in out.stderr
    assert "WARNING:absl" not in out.stderr
    assert "level 3" in out.stdout


@pytest.mark.slow(seconds=30)
def test_verbose_leaves_tensorflow_settings_and_output_alone() -> None:
    out = _run({tfquiet.VERBOSE_ENV: "1"})
    assert "level None" in out.stdout
    assert f"absl {0}" in out.stdout  # logging.NOTSET: the absl logger is not turned down
    # TensorFlow 2.21 logs its oneDNN notice at load on every x86 machine.
    assert _ABSL_LINE.search(out.stderr), out.stderr


def test_filtered_stderr_drops_absl_lines_and_passes_the_rest(
    capfd: pytest.CaptureFixture[str],
) -> None:
    with tfquiet.filtered_stderr():
        os.write(2, b"I0000 00:00:1796684392.217459    8833 port.cc:153] oneDNN noise\n")
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are x\n")
        os.write(2, b"E0000 00:00:1796684397.415309    8833 cuda_platform.cc:52] cuInit\n")
        os.write(2, b"a real problem\n")
        # A child started meanwhile writes through the same filter.
        subprocess.run(["sh", "-c", "echo child says hello >&2"], check=True)
        os.write(2, b"F0000 00:00:1.0 1 x.cc:1] fatal is kept\nno newline at the end")
    err = capfd.readouterr().err
    assert "noise" not in err
    assert "cuInit" not in err
    assert "InitializeLog" not in err
    assert "a real problem\n" in err
    assert "child says hello\n" in err
    assert "fatal is kept\n" in err
    assert err.endswith("no newline at the end")
    # stderr is back to normal afterwards.
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"


def test_root_verbose_option_reaches_tensorflow_imports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(tfquiet.VERBOSE_ENV, "0")
    assert not tfquiet.verbose()
    _, pub = generate_keypair(tmp_path)
    assert cli.main(["keys", "show", str(pub)]) == 0
    assert not tfquiet.verbose()
    assert cli.main(["--verbose", "keys", "show", str(pub)]) == 0
    # The edge CLI never imports the models package: both name the same variable.
    assert cli.VERBOSE_ENV == tfquiet.VERBOSE_ENV
    assert tfquiet.verbose()
