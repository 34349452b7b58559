"""A short coverage-guided fuzz run of the decoders (the full one: tests/fuzz/)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

TARGET = Path(__file__).resolve().parents[2] / "tests/fuzz/fuzz_bridge_decoder.py"


@pytest.mark.slow
def test_fuzz_decoders_for_a_few_seconds(tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    out = subprocess.run(
        [
            sys.executable,
            str(TARGET),
            "-max_total_time=3",
            "-seed=1",
            f"-artifact_prefix={tmp_path}/",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Done" in out.stderr
    assert not list(tmp_path.glob("crash-*"))
