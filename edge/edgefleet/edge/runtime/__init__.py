"""Inference runtimes behind one seam, chosen by the bundle's manifest or the config override."""

from __future__ import annotations

from pathlib import Path

from edgefleet.edge.errors import RuntimeUnavailable
from edgefleet.edge.runtime.base import Runtime, RuntimeFactory, dequantize, quantize
from edgefleet.protocol.manifest import BundleManifest


def _litert(path: Path, manifest: BundleManifest, threads: int) -> Runtime:
    from edgefleet.edge.runtime.litert import LiteRtRuntime

    return LiteRtRuntime(path, manifest, threads)


def _onnx(path: Path, manifest: BundleManifest, threads: int) -> Runtime:
    from edgefleet.edge.runtime.onnx import OnnxRuntime

    return OnnxRuntime(path, manifest, threads)


# Backends import lazily: a LiteRT-only device never pays for importing ONNX Runtime.
RUNTIMES: dict[str, RuntimeFactory] = {"litert": _litert, "onnx": _onnx}


_SUFFIX = {"litert": ".tflite", "onnx": ".onnx"}


def model_path(directory: Path, manifest: BundleManifest, runtime: str) -> Path:
    """The model file of a bundle for ``runtime``: the manifest's, or another listed model file."""
    if runtime == manifest.runtime:
        return directory / manifest.model_file
    suffix = _SUFFIX.get(runtime, "")
    for entry in manifest.files:
        if entry.role == "model" and entry.path.endswith(suffix):
            return directory / entry.path
    raise RuntimeUnavailable(
        f"runtime {runtime!r} was asked for, but bundle {manifest.ref} holds no {suffix} model; "
        "remove model.runtime from the config to follow the bundle"
    )


def load_runtime(
    directory: Path, manifest: BundleManifest, *, override: str = "", threads: int = 1
) -> Runtime:
    """Load a verified bundle's model with the manifest's runtime, or ``override`` when set."""
    name = override or manifest.runtime
    try:
        factory = RUNTIMES[name]
    except KeyError:
        raise RuntimeUnavailable(
            f"no runtime called {name!r}; choose one of {sorted(RUNTIMES)}"
        ) from None
    return factory(model_path(directory, manifest, name), manifest, threads)


__all__ = ["RUNTIMES", "Runtime", "dequantize", "load_runtime", "model_path", "quantize"]
