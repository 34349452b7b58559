"""The float weights a bundle carries for further training: ``weights.npz``, role ``train``.

The inference model of a bundle is int8, so the float weights it was quantized from would be
lost without this file; federated runs start from them (docs/federated.md). Arrays are stored
as ``w00``, ``w01``... in the trainable spec's (Keras) order, the names of the trainable
model's ``get_weights``/``set_weights`` signatures. A model with a frozen base (``activity``)
stores the whole Keras model, base first: a run started from it freezes *that* base and
trains the head (:meth:`TrainableSpec.head_weights`). numpy only: no TensorFlow to read it.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.models.errors import UnsupportedVariant, WeightsFileError
from edgefleet.models.trainable.reference import Array, check_keras_weights
from edgefleet.models.trainable.spec import TrainableSpec
from edgefleet.protocol.bundle import sha256_file
from edgefleet.protocol.errors import HashMismatch, MissingFile
from edgefleet.protocol.manifest import BundleManifest, FileEntry

WEIGHTS_FILE = "weights.npz"
WEIGHTS_ROLE = "train"


def weight_name(index: int) -> str:
    """The array name of weight ``index`` (as the trainable model's signatures name it)."""
    return f"w{index:02d}"


def write_weights(path: Path, spec: TrainableSpec, weights: Sequence[Array]) -> Path:
    """Write the Keras ``weights`` (checked against ``spec``) as float32 ``w00``, ``w01``..."""
    checked = check_keras_weights(spec, weights)
    arrays: dict[str, Any] = {weight_name(i): w for i, w in enumerate(checked)}
    np.savez_compressed(path, **arrays)
    return Path(path)


def read_weights(path: Path, spec: TrainableSpec | None = None) -> list[Array]:
    """The arrays of a weights file, in order; checked against ``spec`` when given.

    Raises :class:`WeightsFileError` for a file that is not such an archive (pickles are
    never loaded).
    """
    try:
        data = np.load(Path(path), allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise WeightsFileError(f"{path} is not a weights file: {exc}") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise WeightsFileError(f"{path} is a single array, not a weights archive (.npz)")
    try:
        names = sorted(data.files)
        if not names or names != [weight_name(i) for i in range(len(names))]:
            raise WeightsFileError(f"{path}: expected arrays named w00, w01..., got {names[:4]}")
        weights = [np.asarray(data[n], np.float32) for n in names]
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise WeightsFileError(f"{path} is not a weights file: {exc}") from None
    finally:
        data.close()
    if not all(np.isfinite(w).all() for w in weights):
        raise WeightsFileError(f"{path} holds NaN or infinite weights")
    if spec is None:
        return weights
    try:
        return check_keras_weights(spec, weights)
    except UnsupportedVariant as exc:
        raise WeightsFileError(f"{path} does not fit the model: {exc}") from None


def weights_entry(manifest: BundleManifest) -> FileEntry | None:
    """The manifest's file with role ``train``, or None for a bundle without weights."""
    return next((f for f in manifest.files if f.role == WEIGHTS_ROLE), None)


def bundle_weights(
    directory: Path, manifest: BundleManifest, spec: TrainableSpec | None = None
) -> list[Array] | None:
    """The float weights of an unpacked bundle, or None when it carries none.

    The file is checked against its sha256 in the (already verified) manifest before it is
    read, so a file swapped after verification is refused.
    """
    entry = weights_entry(manifest)
    if entry is None:
        return None
    path = Path(directory) / entry.path
    if not path.is_file():
        raise MissingFile(f"{manifest.ref}: {entry.path} is listed but not in the bundle")
    if sha256_file(path) != entry.sha256:
        raise HashMismatch(f"{manifest.ref}: {entry.path} does not match its signed sha256")
    return read_weights(path, spec)
