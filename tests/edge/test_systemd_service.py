"""The installed unit under a real systemd: a Debian root booted with ``systemd-nspawn -b``.

``edgefleet agent install`` runs inside it as on a device (root ``/``: useradd, the unit,
``systemctl enable --now``), the agent talks to the host's broker, and systemd restarts it
after ``kill -9`` and when it hangs (SIGSTOP: no more ``WATCHDOG=1``).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support import systemd_root
from support.edge_agent import agent_toml
from support.trust import command_public_key

REPO = Path(__file__).resolve().parents[2]
UNIT = "edgefleet-agent.service"
VENV = "/opt/edgefleet/venv"
# The installed unit says WatchdogSec=30; a drop-in shortens it, as an operator would, so
# the hang is caught in seconds.
WATCHDOG_S = 3

pytestmark = pytest.mark.skipif(
    systemd_root.missing() is not None, reason=f"{systemd_root.missing()}"
)


def wait_for(what: str, cond: Callable[[], bool], timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} within {timeout} s; boot log: {log.read_text()[-3000:]}")


def signal(box: systemd_root.BootedRoot, pid: str, name: str) -> None:
    """``kill -NAME pid`` inside the container (minbase has no procps)."""
    box.run(["python3", "-c", f"import os, signal; os.kill({pid}, signal.{name})"])


@pytest.mark.slow(seconds=150)
def test_systemd_starts_the_agent_and_restarts_it_after_kill_and_a_hang(mosquitto, tmp_path):
    wheels = tmp_path / "wheel"
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(wheels),
         str(REPO)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = wheels.glob("edgefleet-*.whl")
    boot_log = tmp_path / "boot.log"
    with boot_log.open("wb") as log, systemd_root.booted(tmp_path / "box", log) as box:
        # /srv, not /tmp: the booted container mounts a fresh tmpfs on /tmp.
        shutil.copy(wheel, box.inside(f"/srv/{wheel.name}"))
        key = box.inside("/etc/edgefleet-seed/command.pub")
        key.parent.mkdir(parents=True)
        shutil.copy(command_public_key(), key)
        box.inside("/root/agent.toml").write_text(
            agent_toml(
                Path("/var/lib/edgefleet"), mosquitto.port, device="nspawn-1",
                command_keys=[Path("/etc/edgefleet-seed/command.pub")],
            )
        )  # fmt: skip
        # The CLI the device's operator has, then the install it runs (its own venv, pip).
        box.run(["python3", "-m", "venv", "/root/cli"])
        box.run(["/root/cli/bin/pip", "install", "-q", f"/srv/{wheel.name}"], timeout=600)
        box.run(
            ["/root/cli/bin/edgefleet", "agent", "install", "-c", "/root/agent.toml",
             "--package", f"/srv/{wheel.name}"],
            timeout=600,
        )  # fmt: skip

        # enable --now waits for READY=1 (Type=notify): the agent serves.
        assert box.show(UNIT, "ActiveState") == "active"
        assert box.show(UNIT, "SubState") == "running"
        assert box.show(UNIT, "User") == "edgefleet"
        assert box.show(UNIT, "ExecMainStartTimestampMonotonic") != "0"
        assert "nspawn-1" in box.show(UNIT, "StatusText")
        pid = box.show(UNIT, "MainPID")
        uid = next(
            line.split(":")[2]
            for line in box.inside("/etc/passwd").read_text().splitlines()
            if line.startswith("edgefleet:")
        )
        status = box.run(["cat", f"/proc/{pid}/status"]).stdout
        assert f"Uid:\t{uid}\t{uid}\t{uid}\t{uid}" in status, status
        assert box.show(UNIT, "NRestarts") == "0"

        # kill -9: Restart=on-failure brings it back (after RestartSec=5), serving again.
        signal(box, pid, "SIGKILL")
        wait_for(
            "a restart after kill -9",
            lambda: box.show(UNIT, "NRestarts") == "1"
            and box.show(UNIT, "SubState") == "running",
            30, boot_log,
        )  # fmt: skip
        second = box.show(UNIT, "MainPID")
        assert second not in ("0", pid)
        assert "nspawn-1" in box.show(UNIT, "StatusText")

        # A hang: the process is stopped, its pings stop, the watchdog kills and restarts it.
        dropin = box.inside(f"/etc/systemd/system/{UNIT}.d/watchdog.conf")
        dropin.parent.mkdir(parents=True)
        dropin.write_text(f"[Service]\nWatchdogSec={WATCHDOG_S}\n")
        box.run(["systemctl", "daemon-reload"])
        box.run(["systemctl", "restart", UNIT], timeout=150)
        assert box.show(UNIT, "WatchdogUSec") == f"{WATCHDOG_S}s"
        restarts = int(box.show(UNIT, "NRestarts"))
        hung = box.show(UNIT, "MainPID")
        time.sleep(WATCHDOG_S * 2)  # fed through several intervals: no false alarm
        assert box.show(UNIT, "MainPID") == hung
        signal(box, hung, "SIGSTOP")
        wait_for(
            "a watchdog restart of the stopped agent",
            lambda: int(box.show(UNIT, "NRestarts")) == restarts + 1
            and box.show(UNIT, "SubState") == "running",
            60, boot_log,
        )  # fmt: skip
        assert box.show(UNIT, "MainPID") != hung
        journal = box.run(["journalctl", "-u", UNIT, "--no-pager"], check=False).stdout
        assert "Watchdog timeout" in journal, journal[-3000:]
