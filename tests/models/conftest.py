"""Fixtures of the model tests: the zoo built once per run, shared by xdist workers."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from support.models_zoo import Zoo, shared_zoo


@pytest.fixture(scope="session")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Zoo:
    """Every zoo model trained briefly, with int8 LiteRT and ONNX bundles, signed."""
    base = tmp_path_factory.getbasetemp()
    # Under xdist each worker's basetemp is a child of one shared root; share the build there.
    run_root = base.parent if base.name.startswith("popen-gw") else base
    return shared_zoo(run_root)


@pytest.fixture
def digits_bundle(zoo: Zoo, tmp_path: Path) -> Path:
    """A private copy of the digits LiteRT bundle that a test may tamper with."""
    return Path(shutil.copytree(zoo.builds["digits"].bundle("litert"), tmp_path / "bundle"))
