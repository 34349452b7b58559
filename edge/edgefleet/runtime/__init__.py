"""The one inference seam: load a model file with LiteRT or ONNX Runtime and run it.

Both the agent (through its adapter, ``edgefleet.edge.runtime``) and the model zoo
(``edgefleet.models.runner``) run models through this package, so a bundle's golden vectors are
computed by the very code that checks them on the device (docs/decisions/0008-one-runtime-seam.md).
It imports only ``edgefleet.protocol`` and numpy; the backends import their library lazily.
"""

from __future__ import annotations

from pathlib import Path

from edgefleet.protocol.manifest import BundleManifest
from edgefleet.runtime.base import (
    Array,
    FloatArray,
    Runtime,
    RuntimeFactory,
    RuntimeUnavailable,
    dequantize,
    quantize,
)


def _litert(path: Path, manifest: BundleManifest | None, threads: int) -> Runtime:
    from edgefleet.runtime.litert import LiteRtRuntime

    return LiteRtRuntime(path, manifest, threads)


def _onnx(path: Path, manifest: BundleManifest | None, threads: int) -> Runtime:
    from edgefleet.runtime.onnx import OnnxRuntime

    return OnnxRuntime(path, manifest, threads)


# Backends import lazily: a LiteRT-only device never pays for importing ONNX Runtime.
RUNTIMES: dict[str, RuntimeFactory] = {"litert": _litert, "onnx": _onnx}


_SUFFIX = {"litert": ".tflite", "onnx": ".onnx"}


def _factory(name: str) -> RuntimeFactory:
    try:
        return RUNTIMES[name]
    except KeyError:
        raise RuntimeUnavailable(
            f"no runtime called {name!r}; choose one of {sorted(RUNTIMES)}"
        ) from None


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
    factory = _factory(name)
    return factory(model_path(directory, manifest, name), manifest, threads)


def open_model(runtime: str, path: Path, *, threads: int = 1) -> Runtime:
    """Load a bare model file (no manifest yet): its tensor specs are read from the file."""
    return _factory(runtime)(Path(path), None, threads)


__all__ = [
    "RUNTIMES",
    "Array",
    "FloatArray",
    "Runtime",
    "RuntimeUnavailable",
    "dequantize",
    "load_runtime",
    "model_path",
    "open_model",
    "quantize",
]
