"""A Debian arm64 root file system run under qemu-user-static: the aarch64 proof's device.

``debootstrap`` builds the root once per machine (about 5 minutes here, most of it the
emulated second stage) and keeps it as a tarball under the cache directory, keyed by a hash of
its inputs; each test unpacks a fresh copy (seconds). Commands run with ``chroot`` inside a
private mount namespace (``unshare -m``), so the ``/proc``, ``/sys`` and ``/dev`` mounts they
need vanish with the process, even one killed by SIGKILL. The chroot shares the host's network
namespace: 127.0.0.1 inside is the host's loopback.

Needs root, binfmt_misc (mounted and registered here when missing) and the Debian packages
``debootstrap``, ``qemu-user-static`` and ``binfmt-support`` (``.ci/system-packages``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO

SUITE = "bookworm"  # its python3 is 3.11, the oldest Python edgefleet supports
ARCH = "arm64"
VARIANT = "minbase"
PACKAGES = ("python3", "python3-venv", "ca-certificates")
MIRROR = os.environ.get("EDGEFLEET_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# Bumped when the way the root is prepared changes, so an old cached tarball is not reused.
LAYOUT = 1

QEMU = Path("/usr/bin/qemu-aarch64-static")
# The Raspberry Pi 4's core, not qemu's default "max" (every extension qemu 7.2 knows: SVE2,
# I8MM, SME...): under "max" LiteRT's int8 outputs differ from x86 by up to 0.32 and the agent
# rightly refuses the bundle at its golden check; under cortex-a53/a72/a76, neoverse-n1 and
# a64fx they are bit-exact. Whether qemu or LiteRT's kernels for those extensions are wrong is
# not known here (docs/deploy.md, "aarch64, proven under emulation").
QEMU_CPU = os.environ.get("EDGEFLEET_QEMU_CPU", "cortex-a72")
BINFMT = Path("/proc/sys/fs/binfmt_misc")
# Where the host's CA bundle goes inside the root (see Aarch64Root.unpack).
HOST_CA = "/etc/ssl/host-ca.pem"
INSTALL_HINT = "apt-get install -y debootstrap qemu-user-static binfmt-support"


class Aarch64RootError(Exception):
    """The arm64 root cannot be built or run here; the message says what to install or fix."""


def cache_dir() -> Path:
    """Where built roots are kept: ``$EDGEFLEET_CACHE``, else ``$XDG_CACHE_HOME/edgefleet``."""
    env = os.environ.get("EDGEFLEET_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "edgefleet"


def inputs_key() -> str:
    """A hash of everything that shapes the root: a change builds a new one."""
    inputs = {
        "suite": SUITE, "arch": ARCH, "variant": VARIANT, "packages": sorted(PACKAGES),
        "mirror": MIRROR, "layout": LAYOUT,
    }  # fmt: skip
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def tarball_path() -> Path:
    """The cached root of the current inputs (may not exist yet)."""
    return cache_dir() / f"aarch64-rootfs-{inputs_key()}.tar.gz"


def _need_root_tools() -> None:
    if os.geteuid() != 0:
        raise Aarch64RootError("the arm64 root needs root (debootstrap, chroot, mounts)")
    for tool in ("debootstrap", "unshare", "chroot", "tar"):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            raise Aarch64RootError(f"{tool} is not installed: {INSTALL_HINT}")
    if not QEMU.exists():
        raise Aarch64RootError(f"{QEMU} is missing: {INSTALL_HINT}")


def enable_binfmt() -> str:
    """Make the kernel run aarch64 ELF files through qemu; returns the registration's flags.

    The registration must carry the F flag (binfmt-support's qemu-aarch64 does): the kernel
    then opens the interpreter once, on the host, and a chroot needs no copy of qemu.
    """
    _need_root_tools()
    if not (BINFMT / "register").exists():
        done = subprocess.run(
            ["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise Aarch64RootError(
                f"cannot mount binfmt_misc at {BINFMT}: {done.stderr.strip()} "
                "(the kernel needs CONFIG_BINFMT_MISC; in a container, run it privileged)"
            )
    entry = BINFMT / "qemu-aarch64"
    if not entry.exists():
        tool = shutil.which("update-binfmts") or "/usr/sbin/update-binfmts"
        done = subprocess.run(
            [tool, "--enable", "qemu-aarch64"], capture_output=True, text=True, check=False
        )
        if done.returncode != 0 or not entry.exists():
            raise Aarch64RootError(
                f"update-binfmts --enable qemu-aarch64 failed: {done.stderr.strip()} "
                f"({INSTALL_HINT})"
            )
    text = entry.read_text()
    if text.splitlines()[0].strip() != "enabled":
        entry.write_text("1")
    flags = next(
        (ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("flags:")), ""
    )
    if "F" not in flags:
        raise Aarch64RootError(
            f"{entry} lacks the F flag (flags: {flags!r}): a chroot cannot find the "
            "interpreter; reinstall qemu-user-static with binfmt-support"
        )
    return flags


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (one builder of a cached root at a time)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build_tarball(log: IO[str] | None = None) -> tuple[Path, float]:
    """The cached root tarball, built with debootstrap if missing; (path, seconds spent building).

    Concurrent callers wait on a lock and reuse the first one's tarball. A failed build leaves
    no tarball, only its log.
    """
    enable_binfmt()
    target = tarball_path()
    with locked(target.with_suffix(".lock")):
        if target.exists():
            return target, 0.0
        started = time.monotonic()
        work = target.parent / f".build-{inputs_key()}-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        root = work / "root"
        try:
            # In a private mount namespace: the /proc debootstrap mounts inside the root is
            # gone when it ends, even when it is killed.
            cmd = [
                "unshare", "-m", "--propagation", "private", "--",
                "debootstrap", f"--arch={ARCH}", f"--variant={VARIANT}",
                f"--include={','.join(PACKAGES)}", SUITE, str(root), MIRROR,
            ]  # fmt: skip
            done = subprocess.run(
                cmd, stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT, check=False,
                timeout=1800,
            )  # fmt: skip
            if done.returncode != 0:
                raise Aarch64RootError(
                    f"debootstrap failed (exit {done.returncode}); its log: "
                    f"{root / 'debootstrap' / 'debootstrap.log'}"
                )
            # Downloaded .debs and package lists: 40+ MB a test never needs.
            for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
                for f in (root / junk).glob("*"):
                    if f.is_file():
                        f.unlink()
            partial = work / "root.tar.gz"
            subprocess.run(
                ["tar", "-C", str(root), "--numeric-owner", "--one-file-system", "-czf",
                 str(partial), "."],
                check=True, timeout=600,
            )  # fmt: skip
            os.replace(partial, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return target, time.monotonic() - started


def host_ca_bundle() -> Path:
    """The CA bundle the host trusts for HTTPS (pip's own setting first)."""
    for candidate in (
        os.environ.get("PIP_CERT"),
        os.environ.get("SSL_CERT_FILE"),
        ssl.get_default_verify_paths().cafile,
        "/etc/ssl/certs/ca-certificates.crt",
    ):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise Aarch64RootError("no CA bundle found on the host (install ca-certificates)")


def arm_cpuinfo(cpus: int) -> str:
    """A Raspberry Pi 4 style ``/proc/cpuinfo`` with ``cpus`` Cortex-A72 cores.

    qemu 7.2 (Debian bookworm) passes the host's x86 ``/proc/cpuinfo`` through; ONNX Runtime's
    cpuinfo library then crashes (SIGSEGV at import) parsing it as ARM. A real device has this.
    """
    core = (
        "processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
        "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\n"
        "CPU part\t: 0xd08\nCPU revision\t: 3\n\n"
    )
    return "".join(core.format(i=i) for i in range(cpus)) + (
        "Hardware\t: BCM2835\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n"
    )


def _present_cpus() -> int:
    # ONNX Runtime's cpuinfo matches /proc/cpuinfo against /sys/.../present: same count.
    text = Path("/sys/devices/system/cpu/present").read_text().strip()
    count = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        count += int(hi or lo) - int(lo) + 1
    return count


class Aarch64Root:
    """One unpacked arm64 root; :meth:`run` and :meth:`popen` execute commands inside it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.cpuinfo = path.parent / f"{path.name}.cpuinfo"

    @classmethod
    def unpack(cls, dest: Path, tarball: Path) -> Aarch64Root:
        """Unpack ``tarball`` into ``dest`` (made) and prepare it to reach the host's network."""
        dest.mkdir(parents=True)
        subprocess.run(
            ["tar", "-C", str(dest), "--numeric-owner", "-xzf", str(tarball)],
            check=True, timeout=300,
        )  # fmt: skip
        root = cls(dest)
        shutil.copyfile("/etc/resolv.conf", dest / "etc" / "resolv.conf")
        # The host's trust, so that pip reaches the index the way the host does (a TLS proxy in
        # between, as in this project's sandbox, is otherwise refused as self-signed).
        shutil.copyfile(host_ca_bundle(), root.inside(HOST_CA))
        root.cpuinfo.write_text(arm_cpuinfo(_present_cpus()))
        return root

    def inside(self, path: str) -> Path:
        """The host path of ``path`` inside the root."""
        return self.path / path.lstrip("/")

    def argv(self, command: Sequence[str], env: Mapping[str, str] | None = None) -> list[str]:
        """The host command line that runs ``command`` in the root with a clean environment."""
        base = {
            "PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/root", "LANG": "C.UTF-8",
            "PIP_CERT": HOST_CA, "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "PYTHONUNBUFFERED": "1", "QEMU_CPU": QEMU_CPU,
        }  # fmt: skip
        for proxy in ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
            if proxy in os.environ:
                base[proxy] = os.environ[proxy]
        base.update(env or {})
        script = (
            'R=$1; C=$2; shift 2; mount -t proc proc "$R/proc" && mount --bind "$C" '
            '"$R/proc/cpuinfo" && mount -t sysfs sysfs "$R/sys" && mount --rbind /dev "$R/dev" '
            '&& exec chroot "$R" "$@"'
        )
        return [
            "unshare", "-m", "--propagation", "private", "--", "sh", "-c", script, "sh",
            str(self.path), str(self.cpuinfo), "/usr/bin/env", "-i",
            *(f"{k}={v}" for k, v in base.items()), *command,
        ]  # fmt: skip

    def run(
        self,
        command: Sequence[str],
        *,
        timeout: float,
        env: Mapping[str, str] | None = None,
        log: IO[str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``command`` in the root; raise with its output's tail when it fails."""
        done = subprocess.run(
            self.argv(command, env), capture_output=True, text=True, timeout=timeout, check=False
        )
        if log is not None:
            log.write(f"$ {' '.join(command)}\n{done.stdout}{done.stderr}\n")
            log.flush()
        if done.returncode != 0:
            tail = (done.stdout + done.stderr)[-3000:]
            raise Aarch64RootError(
                f"{' '.join(command)} exited {done.returncode} in the root:\n{tail}"
            )
        return done

    def popen(
        self, command: Sequence[str], log: IO[bytes], env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``command`` in the root; every exec chains, so the pid is the command's own."""
        return subprocess.Popen(
            self.argv(command, env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def machine(self) -> str:
        """``uname -m`` inside the root (``aarch64`` under qemu)."""
        return self.run(["uname", "-m"], timeout=60).stdout.strip()
