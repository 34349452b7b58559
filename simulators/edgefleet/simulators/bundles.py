"""Reference bundles for simulated fleets, built once and cached by model, version and zoo code.

Training and converting take tens of seconds, so bundles live in a cache
(``$EDGEFLEET_CACHE_DIR`` or ``~/.cache/edgefleet/sim``) keyed by the model name, the bundle
version, the epochs and a hash of the zoo's source: editing a model rebuilds it, rerunning the
demo does not. One signing key per cache signs every bundle in it; agents trust its public half.
A file lock lets several processes (xdist workers, two demos) share the cache.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from edgefleet.protocol.bundle import pack_bundle
from edgefleet.protocol.signing import generate_keypair

# The fewest epochs (on the small data sets) that still pass the zoo's parity bars here; the
# models' own tests build with the same numbers (tests/support/models_zoo.py).
EPOCHS: dict[str, int] = {"vibration-anomaly": 15, "activity": 4, "digits": 30}
Report = Callable[[str, int, int], None]


def cache_root() -> Path:
    """Where bundles are cached: ``$EDGEFLEET_CACHE_DIR`` or ``$XDG_CACHE_HOME/edgefleet/sim``."""
    env = os.environ.get("EDGEFLEET_CACHE_DIR")
    if env:
        return Path(env).expanduser().resolve()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return (Path(base) / "edgefleet" / "sim").expanduser().resolve()


def zoo_version() -> str:
    """The installed edgefleet version plus a hash of the model zoo's source files."""
    import edgefleet.models as models_pkg

    digest = hashlib.sha256()
    for root in models_pkg.__path__:
        for path in sorted(Path(root).rglob("*.py")):
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    try:
        version = metadata.version("edgefleet")
    except metadata.PackageNotFoundError:  # pragma: no cover - bare checkout
        version = "0"
    return f"{version}-{digest.hexdigest()[:12]}"


@dataclass(frozen=True, slots=True)
class CachedBundle:
    """A built bundle: its directory (for ``model.bundle``) and archive (for the registry)."""

    name: str
    version: str
    directory: Path
    archive: Path


class BundleCache:
    """Builds and caches signed reference bundles (LiteRT int8) under one signing key."""

    def __init__(self, root: Path | None = None) -> None:
        # Absolute: the signing key's path reaches the FL ServerApp, which runs elsewhere.
        self.root = Path(root).expanduser().resolve() if root is not None else cache_root()
        self.root.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.root / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @property
    def private_key(self) -> Path:
        """The cache's signing key."""
        return self.root / "keys" / "edgefleet-signing.key"

    @property
    def public_key(self) -> Path:
        """The public key agents and the cloud trust."""
        return self.root / "keys" / "edgefleet-signing.pub"

    def ensure_keys(self) -> None:
        """Make the cache's signing key pair on first use."""
        with self._locked():
            self._keys()

    def _keys(self) -> None:
        if not self.private_key.exists():
            generate_keypair(self.root / "keys", overwrite=True)

    def path_of(self, name: str, version: str, seed: int = 0) -> Path:
        """The cache directory of ``name@version`` (trained with ``seed``) for the zoo code."""
        epochs = EPOCHS.get(name, 0)
        return self.root / "bundles" / f"{name}-{version}-s{seed}-e{epochs}-{zoo_version()}"

    def cached(self, name: str, version: str = "1.0.0", seed: int = 0) -> CachedBundle | None:
        """The bundle if it is already built."""
        where = self.path_of(name, version, seed)
        archive = where / f"{name}-{version}.tar.gz"
        if archive.exists() and (where / "bundle").is_dir():
            return CachedBundle(name, version, where / "bundle", archive)
        return None

    def ensure(
        self,
        name: str,
        version: str = "1.0.0",
        *,
        seed: int = 0,
        report: Report | None = None,
        weights: list[object] | None = None,
        parent: str | None = None,
    ) -> CachedBundle:
        """Build ``name@version`` unless cached (trains seeded, converts, checks parity, signs)."""
        with self._locked():
            self._keys()
            hit = self.cached(name, version, seed)
            if hit is not None and weights is None:
                return hit
            from edgefleet.models.bundler import build_bundle, bundle_from_weights

            where = self.path_of(name, version, seed)
            shutil.rmtree(where, ignore_errors=True)
            where.mkdir(parents=True)
            if weights is None:
                build_bundle(
                    name,
                    where / "bundle",
                    self.private_key,
                    epochs=EPOCHS.get(name),
                    seed=seed,
                    small=True,
                    version=version,
                    parent=parent,
                    report=report,
                )
            else:
                bundle_from_weights(
                    name,
                    weights,  # type: ignore[arg-type]
                    where / "bundle",
                    self.private_key,
                    seed=seed,
                    small=True,
                    version=version,
                    parent=parent,
                )
            archive = where / f"{name}-{version}.tar.gz"
            pack_bundle(where / "bundle", archive)
            return CachedBundle(name, version, where / "bundle", archive)
