"""A Debian root booted with systemd under ``systemd-nspawn``, for tests of the agent's unit.

``debootstrap`` builds the root once per machine (about 2 minutes) and keeps it as a tarball
under the cache directory (``support.aarch64_root.cache_dir``), keyed by a hash of its inputs;
each test unpacks its own copy, boots it (``systemd-nspawn -b``, host network, so the
container reaches the host's broker on 127.0.0.1) and runs commands in it with ``nsenter``.
Needs root, ``systemd-container`` and ``debootstrap`` (``.ci/system-packages``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from support.aarch64_root import cache_dir, host_ca_bundle, locked

SUITE = "bookworm"  # python3 3.11, the oldest Python edgefleet supports
MIRROR = os.environ.get("EDGEFLEET_DEBIAN_MIRROR", "http://deb.debian.org/debian")
PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "ca-certificates")
LAYOUT = 1  # bumped when the way the root is prepared changes
HOST_CA = "/etc/ssl/certs/edgefleet-host-ca.pem"
INSTALL_HINT = "apt-get install -y systemd-container debootstrap"


class SystemdRootError(Exception):
    """systemd cannot be booted in a container here; the message says what is missing."""


def missing() -> str | None:
    """Why the booted root cannot run here (None: it can)."""
    if os.geteuid() != 0:
        return "needs root (debootstrap, systemd-nspawn)"
    for tool in ("systemd-nspawn", "debootstrap", "nsenter", "tar"):
        if shutil.which(tool) is None:
            return f"needs {tool}: {INSTALL_HINT}"
    return None


def tarball_path() -> Path:
    """The cached root of the current inputs (may not exist yet)."""
    inputs = {"suite": SUITE, "packages": sorted(PACKAGES), "mirror": MIRROR, "layout": LAYOUT}
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / f"systemd-rootfs-{key}.tar.gz"


def build_tarball(log: IO[str] | None = None) -> Path:
    """The cached root tarball, built with debootstrap if missing (callers share it by a lock)."""
    target = tarball_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    with locked(target.with_suffix(".lock")):
        if target.exists():
            return target
        work = target.parent / f".build-systemd-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        root = work / "root"
        root.mkdir(parents=True)
        try:
            cmd = [
                "unshare", "-m", "--propagation", "private", "--",
                "debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
                SUITE, str(root), MIRROR,
            ]  # fmt: skip
            done = subprocess.run(
                cmd, stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT, check=False,
                timeout=1800,
            )  # fmt: skip
            if done.returncode != 0:
                raise SystemdRootError(f"debootstrap failed (exit {done.returncode})")
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
    return target


class BootedRoot:
    """A root booted by systemd-nspawn: its files on the host and commands inside it."""

    def __init__(self, root: Path, nspawn: subprocess.Popen[bytes], leader: int) -> None:
        self.root = root
        self.nspawn = nspawn
        self.leader = leader

    def inside(self, path: str) -> Path:
        """Where the container's ``path`` lies on the host."""
        return self.root / path.lstrip("/")

    def run(
        self, argv: Sequence[str], *, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in the container's namespaces (its PID 1's, so systemctl talks to it)."""
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/root", "LANG": "C.UTF-8", "PIP_CERT": HOST_CA,
            "PIP_DISABLE_PIP_VERSION_CHECK": "1", "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0",
        }  # fmt: skip
        for proxy in ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
            if proxy in os.environ:
                env[proxy] = os.environ[proxy]
        done = subprocess.run(
            ["nsenter", "-t", str(self.leader), "-a", "--", "env", "-i",
             *(f"{k}={v}" for k, v in env.items()), *argv],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        if check and done.returncode != 0:
            raise AssertionError(f"{argv} exited {done.returncode}:\n{done.stdout}{done.stderr}")
        return done

    def show(self, unit: str, prop: str) -> str:
        """``systemctl show -p PROP --value UNIT`` inside the container."""
        return self.run(["systemctl", "show", "-p", prop, "--value", unit]).stdout.strip()


def _leader(nspawn: subprocess.Popen[bytes], deadline: float) -> int:
    """The host PID of the container's PID 1 (systemd): nspawn's child once it has exec'd."""
    while time.monotonic() < deadline:
        if nspawn.poll() is not None:
            raise SystemdRootError(f"systemd-nspawn exited {nspawn.returncode} while booting")
        try:
            children = Path(f"/proc/{nspawn.pid}/task/{nspawn.pid}/children").read_text().split()
            for pid in children:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    return int(pid)
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemdRootError("the container's systemd did not start in time")


@contextmanager
def booted(workdir: Path, log: IO[bytes], *, boot_timeout: float = 90) -> Iterator[BootedRoot]:
    """Unpack the cached root under ``workdir``, boot it, yield it; halt it on the way out."""
    root = workdir / "root"
    root.mkdir(parents=True)
    subprocess.run(["tar", "-C", str(root), "-xzf", str(build_tarball())], check=True)
    # The host's trust, so that pip inside reaches the index the way the host does.
    shutil.copyfile(host_ca_bundle(), root / HOST_CA.lstrip("/"))
    name = f"ef-{uuid.uuid4().hex[:8]}"
    # --register=no/--keep-unit: no machined or host systemd to register with (a container).
    nspawn = subprocess.Popen(
        ["systemd-nspawn", "-q", "-D", str(root), "-M", name, "--register=no", "--keep-unit",
         "--console=passive", "-b"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + boot_timeout
        box = BootedRoot(root, nspawn, _leader(nspawn, deadline))
        state = ""
        while time.monotonic() < deadline:
            state = box.run(["systemctl", "is-system-running"], check=False).stdout.strip()
            if state in ("running", "degraded"):
                break
            time.sleep(0.3)
        else:
            raise SystemdRootError(f"the container did not finish booting: {state!r}")
        yield box
    finally:
        if nspawn.poll() is None:
            nspawn.send_signal(signal.SIGTERM)  # nspawn halts the container cleanly
            try:
                nspawn.wait(30)
            except subprocess.TimeoutExpired:
                nspawn.kill()
                nspawn.wait(10)
        # 300 MB unpacked: not left behind in pytest's kept temp dirs (the tarball stays).
        shutil.rmtree(root, ignore_errors=True)
