"""Model delivery on the device: download, verify, check, smoke-test, swap, or refuse.

The order is the security argument: the archive's size and sha256 are checked against the
command, then the bundle's Ed25519 signature and every file hash, all before any model parser
(LiteRT, ONNX Runtime) reads a byte of it. Only a verified, compatible bundle is loaded, and
only one that reproduces its golden vectors becomes active.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgefleet.edge.config import DeliveryConfig
from edgefleet.edge.errors import DownloadFailed, GoldenMismatch, Incompatible
from edgefleet.edge.pipeline import check_compatible
from edgefleet.edge.runtime import Array, Runtime, load_runtime
from edgefleet.edge.slots import Slots
from edgefleet.edge.verify import Checked, Verifier
from edgefleet.protocol.bundle import read_manifest
from edgefleet.protocol.compat import check_fit, profile_for
from edgefleet.protocol.errors import BundleError, HashMismatch
from edgefleet.protocol.manifest import BundleManifest
from edgefleet.protocol.messages import AssignModel, DeviceProfile

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

_CHUNK = 1 << 16
# The modules each runtime backend imports (edgefleet.edge.runtime), in its fallback order.
_RUNTIME_MODULES = {
    "litert": ("ai_edge_litert", "tflite_runtime", "tensorflow"),
    "onnx": ("onnxruntime",),
}

log = logging.getLogger(__name__)


def available_runtimes() -> list[str]:
    """The runtimes whose library is installed here (found, not imported: TF stays out)."""
    return sorted(
        name
        for name, modules in _RUNTIME_MODULES.items()
        if any(importlib.util.find_spec(m) is not None for m in modules)
    )


def download(url: str, dest: Path, size: int, *, timeout: float, retries: int) -> Path:
    """Fetch ``url`` into ``dest``, resuming a partial file with an HTTP Range request."""
    # Imported here: urllib.request pulls in http.client and email, which a device only
    # needs while a bundle downloads.
    import urllib.error
    import urllib.request

    part = dest.with_suffix(dest.suffix + ".part")
    last = ""
    for _ in range(retries + 1):
        have = part.stat().st_size if part.exists() else 0
        if have > size:
            part.unlink()
            have = 0
        if have == size and size > 0:
            break
        req = urllib.request.Request(url)  # noqa: S310 - http(s) only, checked below
        if have:
            req.add_header("Range", f"bytes={have}-")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
                mode = "ab" if have and resp.status == 206 else "wb"
                with open(part, mode) as f:
                    while chunk := resp.read(_CHUNK):
                        f.write(chunk)
                        if f.tell() > size:
                            raise DownloadFailed(
                                f"{url} sent more than the {size} bytes the command announced",
                                reason="size-mismatch",
                            )
            if part.stat().st_size == size:
                break
        except urllib.error.HTTPError as exc:
            if exc.code == 416:  # range not satisfiable: our partial file is stale
                part.unlink(missing_ok=True)
            last = f"HTTP {exc.code} {exc.reason}"
            if 400 <= exc.code < 500 and exc.code not in (408, 416, 429):
                break
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            last = str(getattr(exc, "reason", exc))
    got = part.stat().st_size if part.exists() else 0
    if got != size:
        raise DownloadFailed(
            f"downloading {url} got {got} of {size} bytes" + (f" ({last})" if last else ""),
            reason="size-mismatch" if not last else "download-failed",
        )
    os.replace(part, dest)
    return dest


def check_model_shapes(runtime: Runtime, bundle: Checked) -> None:
    """Raise :class:`Incompatible` if the model file's tensors are not what the manifest says."""
    m = bundle.manifest
    for what, spec, actual in (
        ("input", m.inputs[0], runtime.input_shape),
        ("output", m.outputs[0], runtime.output_shape),
    ):
        if list(actual[1:]) != list(spec.shape[1:]):
            raise Incompatible(
                f"{m.ref}: the model's {what} has shape {list(actual)}, but the manifest says "
                f"{spec.shape}: the bundle does not describe its own model"
            )


def check_golden(runtime: Runtime, bundle: Checked) -> None:
    """Run the bundle's golden inputs and compare with its golden outputs, or raise."""
    golden = bundle.golden()
    spec = bundle.manifest.golden
    if golden is None or spec is None:
        raise GoldenMismatch(
            f"{bundle.manifest.ref} has no golden vectors to smoke-test with", reason="no-golden"
        )
    feeds: dict[str, Array] = {k: np.asarray(v, dtype=np.float32) for k, v in golden.inputs.items()}
    try:
        outputs = runtime.run_feeds(feeds)
    except (KeyError, ValueError, RuntimeError) as exc:
        raise GoldenMismatch(f"{bundle.manifest.ref}: golden inputs do not run: {exc}") from None
    for name, expected in golden.outputs.items():
        want = np.asarray(expected, dtype=np.float32)
        got = np.asarray(outputs.get(name), dtype=np.float32)
        if got.shape != want.shape:
            raise GoldenMismatch(
                f"{bundle.manifest.ref}: output {name!r} has shape {got.shape}, golden {want.shape}"
            )
        if spec.match == "argmax":
            ok = bool(np.array_equal(got.argmax(axis=-1), want.argmax(axis=-1)))
        else:
            ok = bool(np.allclose(got, want, atol=spec.atol, rtol=spec.rtol))
        if not ok:
            worst = float(np.max(np.abs(got - want)))
            raise GoldenMismatch(
                f"{bundle.manifest.ref}: output {name!r} differs from its golden vector "
                f"(max abs diff {worst:.3g}, atol {spec.atol}, match {spec.match})"
            )


@dataclass(frozen=True, slots=True)
class Staged:
    """A verified, compatible bundle in the staging directory, bound for ``slot``; not active."""

    slot: str
    bundle: Checked


class Delivery:
    """The steps of installing a bundle; the agent runs each on the right executor."""

    def __init__(
        self,
        cfg: DeliveryConfig,
        slots: Slots,
        verifier: Verifier | Sequence[Ed25519PublicKey],
        source_channels: Sequence[str],
        downloads: Path,
        *,
        sample_rate_hz: float | None = None,
        runtimes: Sequence[str] | None = None,
    ) -> None:
        self.cfg = cfg
        self.slots = slots
        if isinstance(verifier, Sequence):
            # Trusted keys as objects (the original signature): verify in this process.
            from edgefleet.edge.verify.inprocess import InProcessVerifier

            verifier = InProcessVerifier.from_keys(verifier)
        self.verifier: Verifier = verifier
        self.channels = list(source_channels)
        self.sample_rate_hz = sample_rate_hz
        self.runtimes = sorted(available_runtimes() if runtimes is None else runtimes)
        self.downloads = Path(downloads)

    def profile(self, serving: BundleManifest | None = None) -> DeviceProfile:
        """What this device offers a model (its birth's ``profile``), serving ``serving``."""
        return profile_for(self.channels, self.sample_rate_hz, self.runtimes, serving)

    def _serving(self) -> BundleManifest | None:
        """The manifest of the active slot's bundle (verified when it was installed)."""
        path = self.slots.active_path()
        if path is None:
            return None
        try:
            return read_manifest(path)
        except (BundleError, OSError) as exc:
            log.warning("cannot read the active bundle's manifest in %s: %s", path, exc)
            return None

    def fetch(self, cmd: AssignModel) -> Path:
        """Download the archive a command names and check its size and sha256."""
        if not cmd.url.startswith(("http://", "https://")):
            raise DownloadFailed(f"bundle URL {cmd.url!r} is not http(s)", reason="bad-url")
        if cmd.size > self.cfg.max_bundle_bytes:
            raise DownloadFailed(
                f"bundle is {cmd.size} bytes; this device accepts at most "
                f"{self.cfg.max_bundle_bytes} (delivery.max_bundle_bytes)",
                reason="too-large",
            )
        self.downloads.mkdir(parents=True, exist_ok=True)
        dest = self.downloads / f"{cmd.sha256}.tar.gz"
        # Only this command's partial download is worth resuming; the rest is SD-card waste.
        self.sweep(keep=cmd.sha256)
        if not dest.exists():
            download(cmd.url, dest, cmd.size, timeout=self.cfg.timeout_s, retries=self.cfg.retries)
        h = hashlib.sha256()
        with open(dest, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        if h.hexdigest() != cmd.sha256:
            dest.unlink()
            raise HashMismatch(
                f"the downloaded archive's sha256 is {h.hexdigest()[:16]}..., the command says "
                f"{cmd.sha256[:16]}...: it was corrupted or replaced in transit",
                reason="archive-mismatch",
            )
        return dest

    def sweep(self, keep: str | None = None) -> int:
        """Delete downloaded archives and ``.part`` files (except sha256 ``keep``'s); count them."""
        removed = 0
        if not self.downloads.is_dir():
            return 0
        for p in self.downloads.iterdir():
            if keep is not None and p.name.startswith(f"{keep}."):
                continue
            if p.is_file() and p.name.endswith((".tar.gz", ".part")):
                try:
                    p.unlink()
                    removed += 1
                except OSError as exc:
                    log.warning("cannot delete the stale download %s: %s", p, exc)
        return removed

    def forget(self, archive: Path) -> None:
        """Delete a fetched archive once it was staged or refused (it is up to 64 MB)."""
        if archive.parent == self.downloads:
            try:
                archive.unlink(missing_ok=True)
            except OSError as exc:  # the next fetch's sweep tries again
                log.warning("cannot delete the archive %s: %s", archive, exc)

    def stage(self, archive: Path, expect: AssignModel | tuple[str, str] | None = None) -> Staged:
        """Unpack into the staging directory, verify signature and hashes, check compatibility.

        ``expect`` is the command that assigns the bundle (or its ``(name, version)``): an
        assignment must fit the whole device profile, as the cloud checked it. A bundle without
        one is the operator's own ``model.bundle``: only what the pipeline cannot run without
        (channels, input spec) is enforced, because simulated fleets sample below a model's
        rate on purpose; a rate that differs is logged.
        """
        allow_task_change = expect is None
        if isinstance(expect, AssignModel):
            allow_task_change = expect.allow_task_change
            expect = (expect.model, expect.version)
        profile = (
            None if expect is None else self.profile(None if allow_task_change else self._serving())
        )
        slot = self.slots.inactive()
        path = self.slots.prepare()
        try:
            bundle = self.verifier.unpack_and_verify(archive, path)
            m = bundle.manifest
            if expect is not None and (m.name, m.version) != expect:
                raise BundleError(
                    f"the command assigns {expect[0]}@{expect[1]} but the bundle is {m.ref}",
                    reason="wrong-model",
                )
            check_compatible(m, self.channels, profile, allow_task_change=allow_task_change)
            if profile is None:
                rate = check_fit(m, self.profile(), input_spec=False).mismatches
                for mismatch in rate:
                    log.warning("model.bundle %s: %s", m.ref, mismatch.detail)
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
        return Staged(slot, bundle)

    def smoke_test(self, staged: Staged, override: str, threads: int) -> Runtime:
        """Load the staged model and check it against its golden vectors (inference thread)."""
        runtime = load_runtime(
            staged.bundle.path, staged.bundle.manifest, override=override, threads=threads
        )
        try:
            check_model_shapes(runtime, staged.bundle)
            check_golden(runtime, staged.bundle)
        except BaseException:
            runtime.close()
            raise
        return runtime

    def activate(self, staged: Staged) -> Staged:
        """Move the checked bundle into its slot and flip the pointer to it (atomic).

        The slot that was active stays as it is, for rollback. Returns the bundle as it now
        lies in its slot.
        """
        bundle = staged.bundle
        target = self.slots.path(staged.slot)
        if bundle.path != target:
            self.slots.install(bundle.path, staged.slot)
            bundle = dataclasses.replace(bundle, path=target)
        self.slots.activate(staged.slot, bundle.manifest.ref)
        return Staged(staged.slot, bundle)

    def discard(self, staged: Staged) -> None:
        """Throw away a staged bundle that failed a later step (never an installed slot)."""
        if staged.bundle.path == self.slots.staging():
            shutil.rmtree(staged.bundle.path, ignore_errors=True)
