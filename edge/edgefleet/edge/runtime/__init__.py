"""The agent's adapter on the one runtime seam (``edgefleet.runtime``): the same backends,
chosen by the bundle's manifest or the config override, with the agent's own error type.

The backends, their hot path and the Runtime protocol live in ``edgefleet.runtime``, which the
model zoo uses too (docs/decisions/0008-one-runtime-seam.md). Only loading can fail with
``RuntimeUnavailable``; this module turns the seam's into the agent's, so a load failure keeps
its agent exit code and its place in the agent's error hierarchy.
"""

from __future__ import annotations

from pathlib import Path

import edgefleet.runtime as seam
from edgefleet.edge.errors import RuntimeUnavailable
from edgefleet.protocol.manifest import BundleManifest
from edgefleet.runtime import RUNTIMES, Array, FloatArray, Runtime, dequantize, quantize


def model_path(directory: Path, manifest: BundleManifest, runtime: str) -> Path:
    """The model file of a bundle for ``runtime``: the manifest's, or another listed model file."""
    try:
        return seam.model_path(directory, manifest, runtime)
    except seam.RuntimeUnavailable as exc:
        raise RuntimeUnavailable(str(exc)) from None


def load_runtime(
    directory: Path, manifest: BundleManifest, *, override: str = "", threads: int = 1
) -> Runtime:
    """Load a verified bundle's model with the manifest's runtime, or ``override`` when set."""
    try:
        return seam.load_runtime(directory, manifest, override=override, threads=threads)
    except seam.RuntimeUnavailable as exc:
        raise RuntimeUnavailable(str(exc)) from None


__all__ = [
    "RUNTIMES",
    "Array",
    "FloatArray",
    "Runtime",
    "dequantize",
    "load_runtime",
    "model_path",
    "quantize",
]
