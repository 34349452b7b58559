"""Make small signed bundle archives for registry tests (no ML framework needed)."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.protocol.bundle import pack_bundle, write_bundle
from edgefleet.protocol.manifest import BundleManifest, Lineage, TensorSpec


def make_archive(
    tmp: Path, key: Ed25519PrivateKey, *, name: str = "kws", version: str = "1.0.0"
) -> Path:
    """A signed ``.tar.gz`` whose model file is a few bytes (the registry never parses it)."""
    d = tmp / f"{name}-{version}"
    d.mkdir(parents=True)
    (d / "model.onnx").write_bytes(b"not-a-real-model-" + version.encode() * 50)
    manifest = BundleManifest(
        name=name,
        version=version,
        runtime="onnx",
        model_file="model.onnx",
        inputs=[TensorSpec(name="x", dtype="float32", shape=[1, 4])],
        outputs=[TensorSpec(name="y", dtype="float32", shape=[1, 2])],
        metrics={"accuracy": 0.93},
        lineage=Lineage(parent=None, trained_by="central", dataset="unit"),
    )
    write_bundle(d, manifest, key)
    archive = tmp / f"{name}-{version}.tar.gz"
    pack_bundle(d, archive)
    return archive
