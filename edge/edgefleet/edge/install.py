"""``edgefleet agent install|uninstall|upgrade``: the agent as a hardened systemd service.

An install is a :class:`Plan`: a list of steps (make a directory, write a file, run a command),
built first and then either printed (``--dry-run``) or applied, so what a dry run shows is
exactly what a real run does. ``root`` is the file system to install into: ``/`` on a device,
a staging directory for tests and image builders (then no service is started, ``useradd`` and
``systemctl`` get ``--root``, and owners are looked up in the staging root's ``/etc/passwd``).

Layout on the device: the venv in ``/opt/edgefleet/venv`` (``--venv``), the config and its keys
in ``/etc/edgefleet`` (``0750 root:edgefleet``, files ``0640``), state in ``/var/lib/edgefleet``
(``0700 edgefleet:edgefleet``), the unit in ``/etc/systemd/system/edgefleet-agent.service``.

The service runs as its own system user ``edgefleet`` rather than ``DynamicUser=yes``: the
device's private keys in ``/etc/edgefleet`` must be readable by the agent and nobody else, which
needs a group that exists when the files are written (a dynamic user's group exists only while
the service runs), and operators read the state directory with ``edgefleet agent status``,
which a dynamic user's ``/var/lib/private`` hides. Serial ports come through
``SupplementaryGroups=dialout`` and a closed device policy that allows only tty devices.
"""

from __future__ import annotations

import grp
import os
import pwd
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import msgspec

from edgefleet.edge.config import AgentConfig, parse_config, resolve_paths
from edgefleet.protocol.errors import ConfigError, EdgefleetError

UNIT_NAME = "edgefleet-agent.service"
USER = "edgefleet"
SERIAL_GROUP = "dialout"
ETC_DIR = PurePosixPath("/etc/edgefleet")
STATE_DIR = PurePosixPath("/var/lib/edgefleet")
UNIT_PATH = PurePosixPath("/etc/systemd/system") / UNIT_NAME
DEFAULT_VENV = PurePosixPath("/opt/edgefleet/venv")
CONFIG_NAME = "agent.toml"
# Written into a venv this installer made, so uninstall removes only what install created.
MARKER = "edgefleet-install.json"
WATCHDOG_S = 30
# What ProtectHome=yes and PrivateTmp=yes hide from the service: a config file, key or venv
# there would be invisible to the agent at run time.
HIDDEN = ("/home", "/root", "/run/user", "/tmp", "/var/tmp")  # noqa: S108 - paths we refuse
# Serial device groups of /proc/devices: USB CDC-ACM (Arduino, Pico), USB serial adapters,
# PL011 (Raspberry Pi UART) and 8250 (x86, the Pi's mini UART).
SERIAL_DEVICES = ("char-ttyACM", "char-ttyUSB", "char-ttyAMA", "char-ttyS")


class InstallError(EdgefleetError):
    """The service cannot be installed, removed or upgraded as asked; the message says why."""

    reason = "install"


# ---------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class MakeDir:
    """Create ``path`` (and parents) with this mode and owner."""

    path: PurePosixPath
    mode: int
    owner: str = "root"
    group: str = "root"

    def describe(self) -> str:
        """One line for ``--dry-run``."""
        return f"mkdir {self.path} (mode {self.mode:04o}, {self.owner}:{self.group})"


@dataclass(frozen=True)
class WriteFile:
    """Write ``content`` to ``path`` atomically, with this mode and owner."""

    path: PurePosixPath
    content: bytes
    mode: int
    owner: str = "root"
    group: str = "root"
    show: bool = True

    def describe(self) -> str:
        """The line, then the content (unless it is a secret or binary) for ``--dry-run``."""
        head = f"write {self.path} (mode {self.mode:04o}, {self.owner}:{self.group})"
        if not self.show:
            return f"{head}: {len(self.content)} bytes, not shown"
        body = self.content.decode(errors="replace").rstrip("\n")
        return head + "\n" + "\n".join(f"    {line}" for line in body.splitlines())


@dataclass(frozen=True)
class SetOwner:
    """Give an existing file this mode and owner."""

    path: PurePosixPath
    mode: int
    owner: str
    group: str

    def describe(self) -> str:
        """One line for ``--dry-run``."""
        return f"chown {self.owner}:{self.group} {self.path}; chmod {self.mode:04o} {self.path}"


@dataclass(frozen=True)
class Run:
    """Run a command (``check``: a failure stops the plan)."""

    argv: tuple[str, ...]
    check: bool = True

    def describe(self) -> str:
        """The command as a shell would read it."""
        return "run " + shlex.join(self.argv)


@dataclass(frozen=True)
class Remove:
    """Remove a file or a directory tree, if it exists."""

    path: PurePosixPath

    def describe(self) -> str:
        """One line for ``--dry-run``."""
        return f"remove {self.path}"


Step = MakeDir | WriteFile | SetOwner | Run | Remove


@dataclass
class Plan:
    """The steps of an install, uninstall or upgrade, for one root."""

    root: Path
    steps: list[Step] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def host(self, path: PurePosixPath) -> Path:
        """Where the target path ``path`` lies on this machine."""
        return self.root / path.relative_to("/")

    def describe(self) -> list[str]:
        """Every file and command, in order, as ``--dry-run`` prints them."""
        return [s.describe() for s in self.steps] + [f"note: {n}" for n in self.notes]

    def apply(self, echo: Callable[[str], None] = lambda _line: None) -> None:
        """Carry out the steps in order; stops at the first that fails."""
        for step in self.steps:
            echo(step.describe().splitlines()[0])
            self._apply(step)

    def _ids(self, owner: str, group: str) -> tuple[int, int]:
        return _uid(self.root, owner), _gid(self.root, group)

    def _apply(self, step: Step) -> None:
        if isinstance(step, MakeDir):
            p = self.host(step.path)
            p.mkdir(parents=True, exist_ok=True)
            os.chown(p, *self._ids(step.owner, step.group))
            p.chmod(step.mode)
        elif isinstance(step, WriteFile):
            p = self.host(step.path)
            tmp = p.with_name(p.name + ".edgefleet-tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(step.content)
                f.flush()
                os.fsync(f.fileno())
            os.chown(tmp, *self._ids(step.owner, step.group))
            tmp.chmod(step.mode)
            tmp.replace(p)
        elif isinstance(step, SetOwner):
            p = self.host(step.path)
            os.chown(p, *self._ids(step.owner, step.group))
            p.chmod(step.mode)
        elif isinstance(step, Remove):
            p = self.host(step.path)
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.exists() or p.is_symlink():
                p.unlink()
        else:
            try:
                done = subprocess.run(step.argv, capture_output=True, text=True, check=False)
            except OSError as exc:
                raise InstallError(f"{shlex.join(step.argv)}: {exc.strerror}") from None
            if done.returncode != 0 and step.check:
                out = (done.stderr or done.stdout).strip()
                raise InstallError(
                    f"{shlex.join(step.argv)} failed (exit {done.returncode}): {out[-2000:]}"
                )


def _passwd_entry(root: Path, table: str, name: str) -> list[str] | None:
    if root == Path("/"):
        try:
            if table == "passwd":
                e = pwd.getpwnam(name)
                return [e.pw_name, "x", str(e.pw_uid), str(e.pw_gid)]
            g = grp.getgrnam(name)
            return [g.gr_name, "x", str(g.gr_gid)]
        except KeyError:
            return None
    path = root / "etc" / table
    if not path.is_file():
        return None
    for line in path.read_text().splitlines():
        fields = line.split(":")
        if fields and fields[0] == name:
            return fields
    return None


def _uid(root: Path, name: str) -> int:
    if name == "root":
        return 0
    entry = _passwd_entry(root, "passwd", name)
    if entry is None:
        raise InstallError(f"no user {name} in {root / 'etc/passwd'}: the install creates it first")
    return int(entry[2])


def _gid(root: Path, name: str) -> int:
    if name == "root":
        return 0
    entry = _passwd_entry(root, "group", name)
    if entry is None:
        raise InstallError(f"no group {name} in {root / 'etc/group'}: the install creates it first")
    return int(entry[2])


# ---------------------------------------------------------------------------- the unit


def unit_text(python: str, *, serial_port: str | None = None, watchdog_s: int = WATCHDOG_S) -> str:
    """The hardened systemd unit that runs the lean launcher with ``python``."""
    devices = [f"DeviceAllow={d} rw" for d in SERIAL_DEVICES]
    if serial_port and serial_port.startswith("/dev/"):
        # The port by path too: its driver may not be in /proc/devices yet when the unit starts.
        devices.append(f"DeviceAllow={serial_port} rw")
    config = ETC_DIR / CONFIG_NAME
    lines = [
        "# Written by `edgefleet agent install`; `edgefleet agent uninstall` removes it.",
        "# Hardening: `systemd-analyze security edgefleet-agent.service` (docs/deploy.md).",
        "[Unit]",
        "Description=edgefleet device agent",
        "Documentation=https://github.com/edgefleet/edgefleet/tree/main/docs/deploy.md",
        "Wants=network-online.target",
        "After=network-online.target",
        # Ten failed starts in ten minutes and systemd gives up (a broken config would
        # otherwise restart forever); `systemctl reset-failed` clears it.
        "StartLimitIntervalSec=600",
        "StartLimitBurst=10",
        "",
        "[Service]",
        "Type=notify",
        "NotifyAccess=main",
        f"ExecStart={python} -m edgefleet.edge --config {config}",
        f"User={USER}",
        f"Group={USER}",
        f"SupplementaryGroups={SERIAL_GROUP}",
        "Restart=on-failure",
        "RestartSec=5",
        f"WatchdogSec={watchdog_s}",
        # Loading and smoke-testing the model comes before READY=1; a Pi Zero is slow at it.
        "TimeoutStartSec=120",
        "TimeoutStopSec=30",
        # SIGTERM to the agent (it stops its SuperNode and flushes), SIGKILL to what is left.
        "KillMode=mixed",
        "Environment=PYTHONUNBUFFERED=1",
        "StandardOutput=journal",
        "StandardError=journal",
        "SyslogIdentifier=edgefleet-agent",
        "StateDirectory=edgefleet",
        "StateDirectoryMode=0700",
        "ConfigurationDirectory=edgefleet",
        "ConfigurationDirectoryMode=0750",
        f"WorkingDirectory={STATE_DIR}",
        "UMask=0077",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateMounts=yes",
        # PrivateDevices=yes would hide the serial ports; a closed policy allows only ttys.
        "PrivateDevices=no",
        "DevicePolicy=closed",
        *devices,
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "ProtectClock=yes",
        "ProtectHostname=yes",
        "ProtectProc=invisible",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "RestrictNamespaces=yes",
        "RestrictRealtime=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        # LiteRT (XNNPACK), ONNX Runtime, cryptography and ctypes run without W+X memory
        # (tests/edge/test_install.py runs the agent under the kernel's equivalent, PR_SET_MDWE).
        "MemoryDenyWriteExecute=yes",
        "RemoveIPC=yes",
        "PrivateIPC=yes",
        "CapabilityBoundingSet=",
        "AmbientCapabilities=",
        "SystemCallFilter=@system-service",
        "SystemCallFilter=~@privileged",
        "SystemCallErrorNumber=EPERM",
        "SystemCallArchitectures=native",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- install


@dataclass(frozen=True)
class InstallOptions:
    """What ``edgefleet agent install`` was asked to do."""

    root: Path = Path("/")
    venv: PurePosixPath = DEFAULT_VENV
    use_current_venv: bool = False
    config: Path | None = None
    package: str | None = None
    start: bool = True


def require_root(action: str) -> None:
    """Refuse a real run without root, naming the command to run instead."""
    if os.geteuid() != 0:
        raise InstallError(
            f"edgefleet agent {action} must run as root: it writes /etc, /var/lib and a systemd "
            f"unit and manages the {USER} user; run it with sudo, or add --dry-run to see what "
            "it would do"
        )


def running_version() -> str:
    """The version of the edgefleet distribution running this command."""
    from importlib import metadata

    try:
        return metadata.version("edgefleet")
    except metadata.PackageNotFoundError:  # pragma: no cover - bare checkout
        return "0+unknown"


def default_package() -> str:
    """What pip installs into a new venv: the running version with the edge extra."""
    return f"edgefleet[edge]=={running_version()}"


def package_spec(package: str | None) -> str:
    """``--package``: a wheel file gets the edge extra; anything else goes to pip as written."""
    if package is None:
        return default_package()
    if package.endswith(".whl"):
        wheel = Path(package).expanduser().absolute()
        if not wheel.is_file():
            raise InstallError(f"--package {package}: no such wheel file")
        return f"edgefleet[edge] @ {wheel.as_uri()}"
    return package


def _under_any(path: str, prefixes: Iterable[str]) -> str | None:
    p = PurePosixPath(path)
    for prefix in prefixes:
        if p == PurePosixPath(prefix) or PurePosixPath(prefix) in p.parents:
            return prefix
    return None


def _parse_for_target(text: str, origin: str, root: Path) -> AgentConfig:
    """The config as the service will read it: relative paths against /etc/edgefleet."""
    base = Path(str(ETC_DIR))
    if root == Path("/"):
        return parse_config(text, origin=origin, base=base)
    # A staging root: the files the config names are checked under the root, not here.
    try:
        raw = tomllib.loads(text)
        cfg = msgspec.convert(raw, AgentConfig)
    except (tomllib.TOMLDecodeError, msgspec.ValidationError) as exc:
        raise ConfigError(f"{origin}: {exc}; `edgefleet agent check -c FILE` says more") from None
    return resolve_paths(cfg, base)


def referenced_files(cfg: AgentConfig) -> list[str]:
    """Every file the config names that the agent reads at run time."""
    m, t, i = cfg.mqtt, cfg.trust, cfg.identity
    files = [m.ca_file, m.cert_file, m.key_file, t.record_key, i.cert_file, i.key_file]
    files += [*cfg.model.trusted_keys, *t.command_keys, cfg.model.bundle]
    return [f for f in files if f]


def check_config_for_service(cfg: AgentConfig, origin: str, root: Path) -> None:
    """Refuse a config the service could not run with (paths it cannot write or see)."""
    data = PurePosixPath(cfg.device.data_dir)
    if data != STATE_DIR and STATE_DIR not in data.parents:
        raise InstallError(
            f"{origin}: device.data_dir is {data}, which the service cannot write "
            f"(ProtectSystem=strict leaves only {STATE_DIR} writable); set "
            f'data_dir = "{STATE_DIR}" in its [device] table'
        )
    for path in referenced_files(cfg):
        hidden = _under_any(path, HIDDEN)
        if hidden is not None:
            raise InstallError(
                f"{origin}: {path} is under {hidden}, which the service cannot see "
                f"(ProtectHome/PrivateTmp); move it to {ETC_DIR} and name it there"
            )
        if not (root / path.lstrip("/")).exists():
            raise InstallError(f"{origin}: {path} does not exist under {root}")


def _read_config(opts: InstallOptions, plan: Plan) -> tuple[str, str]:
    """The config's text and where it came from: ``--config``, or what provision wrote."""
    target = ETC_DIR / CONFIG_NAME
    if opts.config is not None:
        try:
            return opts.config.read_text(), str(opts.config)
        except OSError as exc:
            raise InstallError(f"--config {opts.config}: {exc.strerror}") from None
    if plan.host(target).is_file():
        return plan.host(target).read_text(), str(target)
    raise InstallError(
        f"no config: {target} does not exist; run `edgefleet agent provision --cloud URL "
        "--token T` first, or pass --config FILE"
    )


def _current_python(staging: bool = False) -> PurePosixPath:
    """``--use-current-venv``: this interpreter, if the service can see it and it has the extra.

    ``staging`` (``--root``): the unit is written for another file system whose service this
    machine never runs, so where this venv lives is the builder's business, not a refusal.
    """
    python = PurePosixPath(sys.executable)
    hidden = None if staging else _under_any(str(python), HIDDEN)
    if hidden is not None:
        raise InstallError(
            f"--use-current-venv: {python} is under {hidden}, which the service cannot see "
            "(ProtectHome=yes); let the install make its own venv (the default)"
        )
    import importlib.util

    if importlib.util.find_spec("paho") is None or importlib.util.find_spec("numpy") is None:
        raise InstallError(
            f"--use-current-venv: {sys.prefix} lacks the edge extra; "
            'pip install "edgefleet[edge]" there first'
        )
    return python


def _user_steps(plan: Plan) -> list[Step]:
    """Create the system user (and its group) unless it exists."""
    if _passwd_entry(plan.root, "passwd", USER) is not None:
        return []
    argv = ["useradd", "--system", "--user-group", "--home-dir", str(STATE_DIR)]
    argv += ["--no-create-home", "--shell", "/usr/sbin/nologin", "--comment"]
    argv += ["edgefleet agent", USER]
    if plan.root != Path("/"):
        argv[1:1] = ["--root", str(plan.root)]
    return [Run(tuple(argv))]


def _venv_steps(opts: InstallOptions, plan: Plan) -> list[Step]:
    """Make the dedicated venv (if missing) and pip install the package into it."""
    python = opts.venv / "bin" / "python"
    steps: list[Step] = []
    if not plan.host(python).exists():
        steps.append(MakeDir(opts.venv.parent, 0o755))
        steps.append(Run((sys.executable, "-m", "venv", str(plan.host(opts.venv)))))
    pip = (str(plan.host(python)), "-m", "pip", "install", "--disable-pip-version-check")
    steps.append(Run((*pip, "--upgrade", package_spec(opts.package))))
    marker = msgspec.json.encode({"by": "edgefleet agent install", "venv": str(opts.venv)})
    steps.append(WriteFile(opts.venv / MARKER, marker + b"\n", 0o644))
    if plan.root != Path("/"):
        plan.notes.append(
            f"the venv's console scripts name {plan.host(opts.venv)}; the unit runs "
            f"{python} -m edgefleet.edge, which works once the root is mounted at /"
        )
    return steps


def plan_install(opts: InstallOptions) -> Plan:
    """Every step of ``edgefleet agent install`` for ``opts``, applied or not."""
    root = opts.root.absolute()
    plan = Plan(root)
    text, origin = _read_config(opts, plan)
    cfg = _parse_for_target(text, origin, root)
    check_config_for_service(cfg, origin, root)
    staging = Path(opts.root) != Path("/")
    python = _current_python(staging) if opts.use_current_venv else opts.venv / "bin" / "python"
    # The user first: its group makes the config readable by the agent and no one else.
    plan.steps += _user_steps(plan)
    if not opts.use_current_venv:
        plan.steps += _venv_steps(opts, plan)
    plan.steps.append(MakeDir(ETC_DIR, 0o750, "root", USER))
    plan.steps.append(MakeDir(STATE_DIR, 0o700, USER, USER))
    plan.steps.append(WriteFile(ETC_DIR / CONFIG_NAME, text.encode(), 0o640, "root", USER))
    # Keys and certificates provision wrote beside it: readable by the agent, by no one else.
    etc = plan.host(ETC_DIR)
    if etc.is_dir():
        for f in sorted(etc.rglob("*")):
            target = ETC_DIR / f.relative_to(etc).as_posix()
            if f.is_dir() and not f.is_symlink():
                plan.steps.append(SetOwner(target, 0o750, "root", USER))
            elif f.is_file() and f.name != CONFIG_NAME:
                plan.steps.append(SetOwner(target, 0o640, "root", USER))
    port = cfg.source.port if cfg.source.kind == "serial" else None
    plan.steps.append(MakeDir(UNIT_PATH.parent, 0o755))
    plan.steps.append(
        WriteFile(UNIT_PATH, unit_text(str(python), serial_port=port).encode(), 0o644)
    )
    if root == Path("/"):
        plan.steps.append(Run(("systemctl", "daemon-reload")))
        now = ("--now",) if opts.start else ()
        plan.steps.append(Run(("systemctl", "enable", *now, UNIT_NAME)))
    else:
        plan.steps.append(Run(("systemctl", f"--root={root}", "enable", UNIT_NAME)))
        plan.notes.append(f"staging root {root}: the service is enabled, not started")
    return plan


# ---------------------------------------------------------------------------- uninstall


def plan_uninstall(root: Path = Path("/"), *, purge: bool = False) -> Plan:
    """Stop and remove the service and the venv install made; with ``purge`` config and data."""
    root = root.absolute()
    plan = Plan(root)
    unit = plan.host(UNIT_PATH)
    python = _unit_python(unit)
    if root == Path("/"):
        plan.steps.append(Run(("systemctl", "disable", "--now", UNIT_NAME), check=False))
    else:
        plan.steps.append(Run(("systemctl", f"--root={root}", "disable", UNIT_NAME), check=False))
    plan.steps.append(Remove(UNIT_PATH))
    if root == Path("/"):
        plan.steps.append(Run(("systemctl", "daemon-reload")))
    if python is not None:
        venv = python.parent.parent
        if plan.host(venv / MARKER).is_file():
            plan.steps.append(Remove(venv))
        else:
            plan.notes.append(f"{venv} was not made by install: kept")
    if purge:
        plan.steps += [Remove(ETC_DIR), Remove(STATE_DIR)]
        if _passwd_entry(root, "passwd", USER) is not None:
            argv = (
                ["userdel", USER] if root == Path("/") else ["userdel", "--root", str(root), USER]
            )
            plan.steps.append(Run(tuple(argv)))
    else:
        plan.notes.append(
            f"kept {ETC_DIR} and {STATE_DIR} (and the {USER} user): --purge removes them"
        )
    return plan


def _unit_python(unit: Path) -> PurePosixPath | None:
    """The interpreter an installed unit runs (None: no unit)."""
    if not unit.is_file():
        return None
    for line in unit.read_text().splitlines():
        if line.startswith("ExecStart="):
            return PurePosixPath(shlex.split(line.removeprefix("ExecStart="))[0])
    return None


# ---------------------------------------------------------------------------- upgrade


@dataclass(frozen=True)
class UpgradeResult:
    """What ``upgrade`` did: the versions before and after, and whether it rolled back."""

    before: str
    after: str
    rolled_back: bool
    detail: str = ""


def _venv_version(python: Path) -> str:
    code = "from importlib.metadata import version; print(version('edgefleet'))"
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 else "?"


def upgrade(
    root: Path = Path("/"),
    package: str | None = None,
    *,
    restart: bool = True,
    echo: Callable[[str], None] = lambda _line: None,
) -> UpgradeResult:
    """pip install ``package`` into the service's venv; roll the venv back if the check fails.

    The old venv is copied aside first; the new version must pass ``edgefleet agent check
    --no-broker`` on the installed config (and, with ``restart``, the service must come back
    up), else the copy is put back and the service restarted on the old version.
    """
    root = root.absolute()
    plan = Plan(root)
    python_t = _unit_python(plan.host(UNIT_PATH))
    if python_t is None:
        raise InstallError(f"no {UNIT_PATH} under {root}: run `edgefleet agent install` first")
    venv_t = python_t.parent.parent
    venv, python = plan.host(venv_t), plan.host(python_t)
    if not (venv / MARKER).is_file():
        raise InstallError(
            f"{venv_t} was not made by `edgefleet agent install` (--use-current-venv): upgrade "
            "that environment with pip, then `systemctl restart edgefleet-agent`"
        )
    before = _venv_version(python)
    saved = venv.with_name(venv.name + ".rollback")
    if saved.exists():
        shutil.rmtree(saved)
    echo(f"copying {venv} to {saved}")
    shutil.copytree(venv, saved, symlinks=True)
    spec = package or "edgefleet[edge]"
    config = str(plan.host(ETC_DIR / CONFIG_NAME))
    steps = [
        Run(
            (str(python), "-m", "pip", "install", "--disable-pip-version-check", "--upgrade", spec)
        ),
        Run((str(venv / "bin" / "edgefleet"), "agent", "check", "--no-broker", "-c", config)),
    ]
    if restart and root == Path("/"):
        steps.append(Run(("systemctl", "restart", UNIT_NAME)))
    try:
        Plan(root, list(steps)).apply(echo)
    except InstallError as exc:
        echo(f"rolling back to {before}: {exc}")
        shutil.rmtree(venv)
        saved.rename(venv)
        if restart and root == Path("/"):
            Plan(root, [Run(("systemctl", "restart", UNIT_NAME), check=False)]).apply(echo)
        return UpgradeResult(before, _venv_version(python), rolled_back=True, detail=str(exc))
    shutil.rmtree(saved)
    return UpgradeResult(before, _venv_version(python), rolled_back=False)
