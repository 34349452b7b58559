"""``edgefleet agent install|uninstall`` into staging roots; the unit through systemd-analyze."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.edge_agent import agent_toml

from edgefleet.edge.install import InstallError, InstallOptions, plan_install

EDGEFLEET = str(Path(sys.executable).parent / "edgefleet")
SECURITY_TARGET = 2.0


def staging_root(tmp_path: Path) -> Path:
    """A root with the account files useradd --root needs, as a fresh OS image has them."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "etc/group").write_text("root:x:0:\ndialout:x:20:\n")
    (root / "etc/shadow").write_text("root:*:19000:0:99999:7:::\n")
    (root / "etc/gshadow").write_text("root:*::\ndialout:*::\n")
    return root


def device_config(tmp_path: Path, data_dir: str = "/var/lib/edgefleet", extra: str = "") -> Path:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f'[device]\nid = "pi-1"\ndata_dir = "{data_dir}"\n'
        f'[source]\nkind = "serial"\nport = "/dev/ttyUSB0"\n{extra}'
    )
    return cfg


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([EDGEFLEET, "agent", *args], capture_output=True, text=True, check=False)
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def ids(root: Path, table: str, name: str) -> int:
    for line in (root / "etc" / table).read_text().splitlines():
        f = line.split(":")
        if f[0] == name:
            return int(f[2])
    raise AssertionError(f"{name} not in {table}")


def owner(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


def test_dry_run_prints_every_file_and_command_and_changes_nothing(tmp_path):
    root = staging_root(tmp_path)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    out = cli("install", "--root", str(root), "-c", str(device_config(tmp_path)), "--dry-run")
    text = out.stdout
    assert f"run useradd --root {root} --system --user-group" in text
    assert f"-m venv {root}/opt/edgefleet/venv" in text
    assert "pip install --disable-pip-version-check --upgrade 'edgefleet[edge]==" in text
    assert "write /etc/edgefleet/agent.toml (mode 0640, root:edgefleet)" in text
    assert "mkdir /var/lib/edgefleet (mode 0700, edgefleet:edgefleet)" in text
    assert "write /etc/systemd/system/edgefleet-agent.service (mode 0644, root:root)" in text
    assert "    ExecStart=/opt/edgefleet/venv/bin/python -m edgefleet.edge --config" in text
    assert "    DeviceAllow=/dev/ttyUSB0 rw" in text  # the config's serial port, by path
    assert f"run systemctl --root={root} enable edgefleet-agent.service" in text
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


def test_install_into_a_staging_root_writes_user_dirs_config_and_unit(tmp_path):
    root = staging_root(tmp_path)
    # What `edgefleet agent provision` leaves beside the config: a private key, 0600 root.
    (root / "etc/edgefleet/tls").mkdir(parents=True)
    key = root / "etc/edgefleet/tls/device.key"
    key.write_text("secret")
    key.chmod(0o600)
    cfg = device_config(tmp_path)
    cli("install", "--root", str(root), "-c", str(cfg), "--use-current-venv")

    uid, gid = ids(root, "passwd", "edgefleet"), ids(root, "group", "edgefleet")
    assert uid != 0
    assert gid != 0
    assert owner(root / "etc/edgefleet") == (0o750, 0, gid)
    assert owner(root / "etc/edgefleet/agent.toml") == (0o640, 0, gid)
    assert (root / "etc/edgefleet/agent.toml").read_text() == cfg.read_text()
    assert owner(root / "etc/edgefleet/tls") == (0o750, 0, gid)
    assert owner(key) == (0o640, 0, gid)
    assert owner(root / "var/lib/edgefleet") == (0o700, uid, gid)
    unit = root / "etc/systemd/system/edgefleet-agent.service"
    assert owner(unit) == (0o644, 0, 0)
    assert f"ExecStart={sys.executable} -m edgefleet.edge" in unit.read_text()
    wants = root / "etc/systemd/system/multi-user.target.wants/edgefleet-agent.service"
    assert wants.is_symlink()

    # Again: idempotent (the user exists, nothing is created twice).
    again = cli("install", "--root", str(root), "-c", str(cfg), "--use-current-venv")
    assert "useradd" not in again.stdout
    users = [x.split(":")[0] for x in (root / "etc/passwd").read_text().splitlines()]
    assert users == ["root", "edgefleet"]

    # Uninstall keeps config, data and the user; --purge removes them.
    cli("uninstall", "--root", str(root))
    assert not unit.exists()
    assert not wants.exists()
    assert (root / "etc/edgefleet/agent.toml").is_file()
    assert (root / "var/lib/edgefleet").is_dir()
    cli("uninstall", "--root", str(root), "--purge")
    assert not (root / "etc/edgefleet").exists()
    assert not (root / "var/lib/edgefleet").exists()
    assert "edgefleet:" not in (root / "etc/passwd").read_text()
    assert Path(sys.executable).exists()  # a venv install did not make is never removed


@pytest.mark.parametrize(
    ("data_dir", "extra", "says"),
    [
        ("/etc/edgefleet/data", "", "ProtectSystem=strict leaves only /var/lib/edgefleet"),
        ("/var/lib/edgefleet", '[model]\ntrusted_keys = ["/home/pi/fleet.pub"]\n', "ProtectHome"),
        ("/var/lib/edgefleet", '[model]\ntrusted_keys = ["fleet.pub"]\n', "does not exist"),
    ],
)
def test_a_config_the_service_could_not_run_with_is_refused(tmp_path, data_dir, extra, says):
    root = staging_root(tmp_path)
    cfg = device_config(tmp_path, data_dir, extra)
    with pytest.raises(InstallError, match=says):
        plan_install(InstallOptions(root=root, config=cfg, use_current_venv=True))
    done = cli("install", "--root", str(root), "-c", str(cfg), check=False)
    assert done.returncode != 0
    assert not (root / "etc/edgefleet").exists()


def test_no_config_names_provision(tmp_path):
    with pytest.raises(InstallError, match="edgefleet agent provision --cloud URL"):
        plan_install(InstallOptions(root=staging_root(tmp_path)))


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root")
def test_a_real_run_needs_root(tmp_path):
    root = staging_root(tmp_path)
    cfg = device_config(tmp_path)
    cfg.chmod(0o644)
    tmp_path.chmod(0o755)
    argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", EDGEFLEET, "agent"]
    done = subprocess.run(
        [*argv, "install", "--root", str(root), "-c", str(cfg), "--use-current-venv"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0
    assert "must run as root" in done.stdout + done.stderr
    assert not (root / "etc/edgefleet").exists()


def _installed_unit(tmp_path: Path) -> Path:
    root = staging_root(tmp_path)
    cli("install", "--root", str(root), "-c", str(device_config(tmp_path)), "--use-current-venv")
    return root / "etc/systemd/system/edgefleet-agent.service"


@pytest.mark.skipif(
    not shutil.which("systemd-analyze"), reason="needs systemd (.ci/system-packages)"
)
def test_systemd_analyze_verifies_the_unit_and_scores_it_ok(tmp_path):
    unit = _installed_unit(tmp_path)
    verify = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stderr
    assert "edgefleet-agent.service" not in verify.stderr, verify.stderr
    sec = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    found = re.search(
        r"Overall exposure level for edgefleet-agent.service: ([0-9.]+) (\w+)", sec.stdout
    )
    assert found, sec.stdout + sec.stderr
    score = float(found.group(1))
    assert score <= SECURITY_TARGET, sec.stdout
    assert found.group(2) == "OK"


def _mdwe_available() -> bool:
    # PR_SET_MDWE (Linux 6.3+): the kernel's own form of systemd's MemoryDenyWriteExecute.
    probe = "import ctypes,sys; sys.exit(ctypes.CDLL(None).prctl(65, 1, 0, 0, 0))"
    return subprocess.run([sys.executable, "-c", probe], check=False).returncode == 0


@pytest.mark.slow(seconds=10)
@pytest.mark.skipif(not _mdwe_available(), reason="needs PR_SET_MDWE (Linux 6.3 or newer)")
def test_the_agent_serves_without_writable_executable_memory(
    mosquitto, tmp_path, good_bundle, trusted_pub
):
    """MemoryDenyWriteExecute=yes in the unit: LiteRT loads, smoke-tests and infers without W+X.

    systemd enforces it with a seccomp filter; PR_SET_MDWE refuses the same mappings (W+X, or
    gaining X later), is inherited through exec, and needs no systemd.
    """
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        agent_toml(
            tmp_path / "d", mosquitto.port, device="mdwe-1", bundle=good_bundle, keys=[trusted_pub]
        )
    )
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    wrapper = (
        "import ctypes, os, sys, mmap\n"
        "assert ctypes.CDLL(None).prctl(65, 1, 0, 0, 0) == 0\n"
        "try:\n"
        "    mmap.mmap(-1, 4096, prot=7)\n"
        "    sys.exit('W+X memory is still allowed')\n"
        "except OSError:\n"
        "    pass\n"
        "argv = [sys.executable, '-m', 'edgefleet.edge', '--config', sys.argv[1]]\n"
        "os.execv(sys.executable, argv)\n"
    )
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "400000"}
    log = tmp_path / "agent.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", wrapper, str(cfg)], env=env, stdout=out, stderr=out
        )
    try:
        sock.settimeout(30)
        lines: list[str] = []
        while "READY=1" not in lines:
            lines = sock.recv(4096).decode().split("\n")
        assert "STATUS=mdwe-1: serving tiny-vib@1.0.0" in lines
        deadline = time.monotonic() + 20
        while "model loaded" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # inference runs meanwhile (the pings keep coming)
        assert proc.poll() is None, log.read_text()
        sock.settimeout(2)
        assert "WATCHDOG=1" in sock.recv(4096).decode().split("\n")
    finally:
        proc.terminate()
        proc.wait(20)
        sock.close()
    assert proc.returncode == 0, log.read_text()


# ---------------------------------------------------------------------------- upgrade

PROBE = '''"""Stands in for the edgefleet console script: logs its argv, exits with CODE."""
import json, os, sys

CODE = {code}


def main() -> None:
    log = os.environ.get("EDGEFLEET_UPGRADE_PROBE_LOG")
    if log:
        with open(log, "a") as f:
            f.write(json.dumps(["{version}", sys.argv[1:]]) + "\\n")
    if CODE:
        print("probe {version}: check failed", file=sys.stderr)
    sys.exit(CODE)
'''


def probe_wheel(tmp_path: Path, version: str, check_exit: int) -> Path:
    """A wheel of the distribution ``edgefleet`` whose ``edgefleet`` script exits ``check_exit``.

    Same distribution name, so pip really replaces the venv's edgefleet with it, as an upgrade
    does; upgrade only runs that script and reads the version, so nothing else is needed.
    """
    import base64
    import hashlib
    import zipfile

    out = tmp_path / f"wheels-{version}-{check_exit}"
    out.mkdir()
    wheel = out / f"edgefleet-{version}-py3-none-any.whl"
    info = f"edgefleet-{version}.dist-info"
    files = {
        "edgefleet_upgrade_probe.py": PROBE.format(code=check_exit, version=version),
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: edgefleet\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
        f"{info}/entry_points.txt": "[console_scripts]\nedgefleet = edgefleet_upgrade_probe:main\n",
    }
    record = []
    with zipfile.ZipFile(wheel, "w") as z:
        for name, text in files.items():
            data = text.encode()
            z.writestr(name, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record.append(f"{name},sha256={digest.decode()},{len(data)}")
        record.append(f"{info}/RECORD,,")
        z.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return wheel


def tree(path: Path) -> dict[str, str]:
    """Every file under ``path``: its content's hash, or a symlink's target."""
    import hashlib

    out: dict[str, str] = {}
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path).as_posix()
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def venv_version(root: Path) -> str:
    python = root / "opt/edgefleet/venv/bin/python"
    code = "from importlib.metadata import version; print(version('edgefleet'))"
    return subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.mark.slow(seconds=30)
def test_upgrade_rolls_the_venv_back_when_the_new_version_fails_its_check(tmp_path, monkeypatch):
    root = staging_root(tmp_path)
    cfg = device_config(tmp_path)
    log = tmp_path / "probe.log"
    monkeypatch.setenv("EDGEFLEET_UPGRADE_PROBE_LOG", str(log))
    # A real install: its own venv under the root, pip installing version 1.0 into it.
    cli(
        "install",
        "--root",
        str(root),
        "-c",
        str(cfg),
        "--package",
        str(probe_wheel(tmp_path, "1.0", 0)),
    )
    assert venv_version(root) == "1.0"
    venv = root / "opt/edgefleet/venv"
    service = {
        "unit": (root / "etc/systemd/system/edgefleet-agent.service").read_text(),
        "config": (root / "etc/edgefleet/agent.toml").read_text(),
        "wants": os.readlink(
            root / "etc/systemd/system/multi-user.target.wants/edgefleet-agent.service"
        ),
    }
    before = tree(venv)
    site = "lib/python{}.{}/site-packages".format(*sys.version_info[:2])
    assert f"{site}/edgefleet-1.0.dist-info/METADATA" in before

    failed = cli(
        "upgrade",
        "--root",
        str(root),
        "--package",
        str(probe_wheel(tmp_path, "2.0", 3)),
        check=False,
    )
    assert failed.returncode != 0
    said = failed.stdout + failed.stderr
    assert "rolled back to 1.0" in said, said
    assert "probe 2.0: check failed" in said
    # 2.0 really was installed and checked against the installed config, then taken away.
    config = str(root / "etc/edgefleet/agent.toml")
    checks = [json.loads(line) for line in log.read_text().splitlines()]
    assert checks == [["2.0", ["agent", "check", "--no-broker", "-c", config]]]
    assert venv_version(root) == "1.0"
    assert tree(venv) == before
    assert not (root / "opt/edgefleet/venv.rollback").exists()
    assert service == {
        "unit": (root / "etc/systemd/system/edgefleet-agent.service").read_text(),
        "config": (root / "etc/edgefleet/agent.toml").read_text(),
        "wants": os.readlink(
            root / "etc/systemd/system/multi-user.target.wants/edgefleet-agent.service"
        ),
    }

    # A version that passes its check stays, and the copy of the old venv is dropped.
    done = cli("upgrade", "--root", str(root), "--package", str(probe_wheel(tmp_path, "2.1", 0)))
    assert "upgraded 1.0 -> 2.1" in done.stdout
    assert venv_version(root) == "2.1"
    assert json.loads(log.read_text().splitlines()[-1])[0] == "2.1"
    assert not (root / "opt/edgefleet/venv.rollback").exists()
    assert (root / "etc/systemd/system/edgefleet-agent.service").read_text() == service["unit"]


def test_a_venv_the_service_cannot_see_is_refused_except_for_a_staging_root(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from edgefleet.edge import install

    monkeypatch.setattr(install.sys, "executable", "/tmp/build/.venv/bin/python")
    with pytest.raises(InstallError, match="under /tmp, which the service cannot see"):
        install._current_python()
    # --root writes a unit for another file system: this venv's place is the builder's choice.
    assert install._current_python(staging=True) == install.PurePosixPath(
        "/tmp/build/.venv/bin/python"
    )
