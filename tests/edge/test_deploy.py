"""`edgefleet agent deploy` over real SSH: an sshd in a network namespace of the test's own plays
the device; it installs, provisions and starts the agent, and the cloud sees it online.

The "device" shares this machine's file system, so everything goes under ``--install-root``
(a staging root in tmp_path) and the agent is started with ``--start-command`` in a private
mount namespace whose ``/var/lib`` is the staging root's: nothing outside tmp_path is written.
systemd starting the unit is not proven here (this sandbox's PID 1 is not systemd).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.cloud.app import Cloud, CloudConfig
from edgefleet.cloud.broker import MosquittoBroker, free_port, mosquitto_available
from edgefleet.cloud.identity.service import IdentitySettings

pytest.importorskip("asyncssh")

EDGEFLEET = str(Path(sys.executable).parent / "edgefleet")
SSHD = "/usr/sbin/sshd"
# The two ends of the test's own veth pair: link-local, and they exist only while it runs.
HOST_IP, DEVICE_IP = "169.254.77.1", "169.254.77.2"


def _sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


@pytest.fixture
def netns() -> Iterator[str]:
    """A network namespace joined to this one by a veth pair (HOST_IP here, DEVICE_IP there)."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.fail("this test needs root and iproute2 (ip netns)")
    tag = uuid.uuid4().hex[:6]
    ns, here, there = f"efdeploy-{tag}", f"efd{tag}a", f"efd{tag}b"
    _sh("ip", "netns", "add", ns)
    try:
        _sh("ip", "link", "add", here, "type", "veth", "peer", "name", there)
        _sh("ip", "link", "set", there, "netns", ns)
        _sh("ip", "addr", "add", f"{HOST_IP}/30", "dev", here)
        _sh("ip", "link", "set", here, "up")
        _sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{DEVICE_IP}/30", "dev", there)
        _sh("ip", "netns", "exec", ns, "ip", "link", "set", there, "up")
        _sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        yield ns
    finally:
        subprocess.run(["ip", "link", "del", here], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def _keygen(path: Path) -> Path:
    _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path))
    return path


class Sshd:
    """``sshd -D`` in the namespace, on DEVICE_IP:port, with its own host key and config."""

    def __init__(self, work: Path, ns: str, authorized: str) -> None:
        work.mkdir(parents=True)
        self.port = free_port()
        host_key = _keygen(work / "host_key")
        (work / "authorized_keys").write_text(authorized)
        config = work / "sshd_config"
        config.write_text(
            f"ListenAddress {DEVICE_IP}:{self.port}\n"
            f"HostKey {host_key}\n"
            f"AuthorizedKeysFile {work / 'authorized_keys'}\n"
            f"PidFile {work / 'sshd.pid'}\n"
            # tmp_path is under the world-writable /tmp, which StrictModes refuses.
            "StrictModes no\nUsePAM no\nPermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "Subsystem sftp internal-sftp\nLogLevel VERBOSE\n"
        )
        self.log = work / "sshd.log"
        # sshd wants its privilege separation directory /run/sshd: a tmpfs /run in a private
        # mount namespace gives it one without touching this machine's /run.
        inner = f"mount -t tmpfs -o mode=755 tmpfs /run && mkdir -m 755 /run/sshd && exec {SSHD}"
        inner += f" -D -e -f {config}"
        argv = ["ip", "netns", "exec", ns, "unshare", "--mount", "--propagation", "private"]
        self.proc = subprocess.Popen(
            [*argv, "sh", "-c", inner],
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while b"Server listening" not in self.log.read_bytes():
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop sshd and every session it started."""
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=10)


def _staging_root(path: Path) -> Path:
    """The account files useradd --root needs, as a fresh OS image has them."""
    (path / "etc").mkdir(parents=True)
    (path / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (path / "etc/group").write_text("root:x:0:\ndialout:x:20:\n")
    (path / "etc/shadow").write_text("root:*:19000:0:99999:7:::\n")
    (path / "etc/gshadow").write_text("root:*::\ndialout:*::\n")
    return path


def _kill_agent(root: Path) -> None:
    pid_file = root / "var/lib/edgefleet/deploy-agent.pid"
    if pid_file.is_file():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(int(pid_file.read_text().strip()), signal.SIGTERM)


@pytest.mark.slow(seconds=120)
def test_deploy_installs_provisions_and_brings_the_device_online_and_is_idempotent(
    tmp_path: Path, netns: str
) -> None:
    if not mosquitto_available():
        pytest.fail("mosquitto is not installed: apt-get install -y mosquitto")
    if not Path(SSHD).exists():
        pytest.fail("sshd is not installed: apt-get install -y openssh-server")
    broker = MosquittoBroker(tmp_path / "mosquitto", host=HOST_IP).start()
    cloud = Cloud(
        CloudConfig(
            workdir=tmp_path / "cloud",
            broker_url=broker.url,
            http_host=HOST_IP,
            http_port=0,
            dashboard=None,
            allowed_hosts=(HOST_IP,),
            node_id=f"cloud-{uuid.uuid4().hex[:6]}",
            identity=IdentitySettings(
                directory=tmp_path / "cloud" / "identity",
                device_broker_url=f"mqtt://{HOST_IP}:{broker.port}",
            ),
        )
    )
    client_key = _keygen(tmp_path / "id_ed25519")
    pub = (tmp_path / "id_ed25519.pub").read_text()
    good = Sshd(tmp_path / "sshd-good", netns, pub)
    # A second device whose sshd does not know our key: it must fail alone.
    refusing = Sshd(tmp_path / "sshd-refusing", netns, "")
    root = _staging_root(tmp_path / "device")
    wheels = tmp_path / "wheel"
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(wheels)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    (wheel,) = wheels.glob("edgefleet-*.whl")
    # The namespace has no route to the index: the device installs from a copied wheelhouse.
    house = tmp_path / "wheelhouse"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "-w",
         str(house), f"edgefleet[edge] @ {wheel.as_uri()}"],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    # The agent's state dir is /var/lib/edgefleet (what the service uses): a private mount
    # namespace puts the staging root's /var/lib there for this agent alone.
    start = (
        "exec unshare --mount --propagation private sh -c "
        "'mount --bind {root}/var/lib /var/lib && "
        "exec {python} -m edgefleet.edge --config {config}'"
    )
    known = tmp_path / "known_hosts"
    try:
        cloud.start()
        token = str(cloud.admin_token)

        def deploy(*hosts: str) -> subprocess.CompletedProcess[str]:
            argv = [EDGEFLEET, "agent", "deploy", "--cloud", cloud.http_url, "--fleet", "lab"]
            for h in hosts:
                argv += ["--host", h]
            argv += ["--wheel", str(wheel), "--wheelhouse", str(house)]
            argv += ["--identity", str(client_key), "--known-hosts", str(known)]
            argv += ["--accept-new-host-keys", "--install-root", str(root)]
            argv += ["--start-command", start, "--online-timeout", "60"]
            env = {**os.environ, "EDGEFLEET_TOKEN": token, "COLUMNS": "200"}
            return subprocess.run(
                argv, capture_output=True, text=True, timeout=600, check=False, env=env
            )

        good_host, bad_host = f"root@{DEVICE_IP}:{good.port}", f"root@{DEVICE_IP}:{refusing.port}"
        first = deploy(good_host, bad_host)
        out = first.stdout + first.stderr
        assert first.returncode == 1, out
        assert "1 of 2 host(s) failed" in out, out
        assert "refused our keys" in out, out
        rows = {line.split("│")[1].strip(): line for line in first.stdout.splitlines()
                if line.count("│") > 3 and "root@" in line}  # fmt: skip
        assert "deployed" in rows[good_host], out
        assert "failed" in rows[bad_host], out

        # What deploy did on the device: provisioned, the unit installed, the service venv.
        etc = root / "etc/edgefleet"
        # The renewable identity lives in the service's state directory (ProtectSystem=strict).
        crt = root / "var/lib/edgefleet/identity/device.crt"
        assert crt.is_file()
        assert (root / "etc/systemd/system/edgefleet-agent.service").is_file()
        assert (root / "opt/edgefleet/venv/bin/edgefleet-agent").is_file()
        assert "edgefleet:" in (root / "etc/passwd").read_text()
        assert cloud.store is not None
        (device,) = [d for d in cloud.store.devices() if d.online]
        assert device.device_id in rows[good_host]
        # Both hosts' keys were recorded (accept-new), so the second run checks them.
        assert known.read_text().count(DEVICE_IP) == 2
        cert = crt.read_bytes()
        config = (etc / "agent.toml").read_bytes()
        pid = (root / "var/lib/edgefleet/deploy-agent.pid").read_text()

        second = deploy(good_host)
        assert second.returncode == 0, second.stdout + second.stderr
        assert "unchanged" in second.stdout, second.stdout
        assert "deployed" not in second.stdout, second.stdout
        # Nothing changed: the same identity, config and running agent.
        assert crt.read_bytes() == cert
        assert (etc / "agent.toml").read_bytes() == config
        assert (root / "var/lib/edgefleet/deploy-agent.pid").read_text() == pid
        assert [d.device_id for d in cloud.store.devices()] == [device.device_id]
    finally:
        _kill_agent(root)
        good.stop()
        refusing.stop()
        cloud.stop()
        broker.kill()
