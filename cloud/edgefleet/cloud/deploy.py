"""``edgefleet agent deploy``: put the agent on devices over SSH, from a laptop.

It runs on the operator's machine and talks to the cloud API (claim tokens, the online wait),
so it lives on the cloud side of the layering; the device needs nothing but ``python3`` with
``venv`` and an SSH server. Per host, concurrently: connect (host keys checked against
known_hosts), check the platform, copy the wheel, make the service venv, provision with a claim
token, ``edgefleet agent install``, start, and wait until the cloud sees the device online.

Idempotence: a host whose config and identity exist, whose unit is installed and whose venv
already holds the version being deployed is left as it is and reported ``unchanged``.

Only the standard library speaks HTTP here (no fastapi/httpx), so ``edgefleet[edge,deploy]``
is enough on the laptop; asyncssh is imported when the command runs, so a missing one is the
one-line "needs the 'deploy' extra" error rather than a command that is not there.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from edgefleet.protocol.errors import ConfigError, EdgefleetError

if TYPE_CHECKING:
    import asyncssh

SUPPORTED_MACHINES = ("aarch64", "x86_64")
MIN_PYTHON = (3, 11)
VENV = PurePosixPath("/opt/edgefleet/venv")
ETC = PurePosixPath("/etc/edgefleet")
STATE = PurePosixPath("/var/lib/edgefleet")
UNIT = PurePosixPath("/etc/systemd/system/edgefleet-agent.service")
# Where a --start-command agent's pid and output go (under the install root's state dir).
PID_FILE = "deploy-agent.pid"
LOG_FILE = "deploy-agent.log"
_WHEEL = re.compile(r"^edgefleet-(?P<version>[^-]+)-.*\.whl$")
_HOST = re.compile(r"^(?:(?P<user>[^@\s]+)@)?(?P<host>\[[^\]]+\]|[^:@\s]+)(?::(?P<port>\d+))?$")


class DeployError(EdgefleetError):
    """A deploy step failed on one host (or before any); the message says what to do."""

    reason = "deploy"


class HostRefused(DeployError):
    """The host is not one the agent can run on (architecture, Python, venv)."""

    reason = "deploy-platform"
    exit_code = 5


@dataclass(frozen=True, slots=True)
class Target:
    """One ``--host user@host[:port]``."""

    user: str
    host: str
    port: int

    @property
    def label(self) -> str:
        """How the host is named in progress lines and the summary."""
        port = f":{self.port}" if self.port != 22 else ""
        return f"{self.user}@{self.host}{port}"


def parse_host(text: str, default_user: str = "root") -> Target:
    """``user@host``, ``host``, ``user@host:2222`` or ``user@[::1]:2222``."""
    m = _HOST.match(text.strip())
    if m is None:
        raise ConfigError(f"--host {text!r}: write user@host or user@host:port")
    host = m.group("host").strip("[]")
    return Target(m.group("user") or default_user, host, int(m.group("port") or 22))


@dataclass(frozen=True)
class DeployOptions:
    """Everything ``edgefleet agent deploy`` was asked, shared by all hosts."""

    cloud: str
    token: str | None = None
    claim_token: str | None = None
    fleet: str | None = None
    tags: tuple[str, ...] = ()
    wheel: Path | None = None
    from_index: bool = False
    wheelhouse: Path | None = None
    identity: Path | None = None
    known_hosts: Path = field(default_factory=lambda: Path("~/.ssh/known_hosts").expanduser())
    accept_new_host_keys: bool = False
    install_root: PurePosixPath = field(default_factory=lambda: PurePosixPath("/"))
    start_command: str | None = None
    device_cloud: str | None = None
    online_timeout: float = 120.0
    connect_timeout: float = 15.0
    python: str = "python3"


@dataclass
class HostResult:
    """What happened on one host."""

    target: Target
    status: str = "pending"  # deployed | unchanged | installed | failed
    device_id: str | None = None
    version: str | None = None
    detail: str = ""
    seconds: float = 0.0


# ---------------------------------------------------------------------------- the cloud API


def _api(opts: DeployOptions, method: str, path: str, body: object | None = None) -> Any:
    """One cloud API call with the admin token (stdlib only: no fastapi on the laptop)."""
    url = opts.cloud.rstrip("/") + path
    headers = {"Content-Type": "application/json"}
    if opts.token:
        headers["Authorization"] = f"Bearer {opts.token}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:  # noqa: S310 - --cloud, http(s)
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read()).get("detail", exc.reason)
        except (ValueError, AttributeError):
            detail = exc.reason
        raise DeployError(f"the cloud answered {exc.code} to {method} {path}: {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise DeployError(f"cannot reach the cloud at {opts.cloud}: {exc}") from None


def make_claim_token(opts: DeployOptions) -> str:
    """A one-use claim token for one host, or the one given with ``--claim-token``."""
    if opts.claim_token:
        return opts.claim_token
    if not opts.token or not opts.fleet:
        raise ConfigError(
            "no claim token: pass --claim-token T (from `edgefleet device claim-token`), or "
            "--token ADMIN_TOKEN and --fleet F so deploy makes one per host"
        )
    answer = _api(
        opts,
        "POST",
        "/v1/claim-tokens",
        {"fleet": opts.fleet, "tags": list(opts.tags), "uses": 1, "ttl_s": 900.0},
    )
    return str(answer["token"])


def device_online(opts: DeployOptions, device_id: str) -> bool:
    """Whether the cloud has the device online now (``GET /v1/devices/{id}``)."""
    quoted = urllib.parse.quote(device_id, safe="")
    try:
        state = _api(opts, "GET", f"/v1/devices/{quoted}")
    except DeployError as exc:
        if " 404 " in str(exc):
            return False  # not seen yet: its birth message has not arrived
        raise
    return bool(state.get("online"))


# ---------------------------------------------------------------------------- the package


def wheel_version(wheel: Path) -> str:
    """The version in a wheel file's name."""
    m = _WHEEL.match(wheel.name)
    if m is None:
        raise ConfigError(f"--wheel {wheel}: not an edgefleet wheel (edgefleet-VERSION-...whl)")
    return m.group("version")


def build_wheel(out: Path) -> Path:
    """Build a wheel of this checkout into ``out`` (the default when no --wheel is given)."""
    import importlib.util
    import subprocess
    import sys

    checkout = Path(__file__).resolve().parents[3]
    if not (checkout / "pyproject.toml").is_file():
        raise ConfigError(
            "this edgefleet is not a source checkout, so there is no wheel to build: pass "
            "--wheel FILE or --from-index"
        )
    out.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out)]
    if importlib.util.find_spec("hatchling") is not None:
        argv.append("--no-build-isolation")  # the backend is here: no index needed to build
    done = subprocess.run([*argv, str(checkout)], capture_output=True, text=True, check=False)
    wheels = sorted(out.glob("edgefleet-*.whl"), key=lambda p: p.stat().st_mtime)
    if done.returncode != 0 or not wheels:
        raise DeployError(f"building the wheel failed: {(done.stderr or done.stdout)[-1500:]}")
    return wheels[-1]


def running_version() -> str:
    """The version of the edgefleet running this command (what --from-index installs)."""
    try:
        return metadata.version("edgefleet")
    except metadata.PackageNotFoundError:  # pragma: no cover - bare checkout
        return "0+unknown"


# ---------------------------------------------------------------------------- one host


class _Host:
    """The steps on one host over one SSH connection."""

    def __init__(
        self, conn: asyncssh.SSHClientConnection, target: Target, opts: DeployOptions
    ) -> None:
        self.conn, self.target, self.opts = conn, target, opts
        self.sudo = "" if target.user == "root" else "sudo -n "
        root = opts.install_root
        self.root = root
        self.venv = self.at(VENV)
        self.python = self.venv / "bin" / "python"
        self.etc = self.at(ETC)
        self.state = self.at(STATE)

    def at(self, path: PurePosixPath) -> PurePosixPath:
        """Where the target path ``path`` lies under the install root."""
        return self.root / path.relative_to("/")

    async def sh(self, command: str, *, what: str, stdin: str | None = None) -> str:
        """Run ``command`` with sh (as root via sudo -n when needed); its stdout, or fail."""
        full = f"{self.sudo}sh -c {shlex.quote(command)}"
        done = await self.conn.run(full, check=False, input=stdin)
        if done.exit_status != 0:
            err = str(done.stderr or done.stdout or "").strip()
            if self.sudo and "a password is required" in err:
                raise DeployError(
                    f"{what}: sudo on {self.target.host} needs a password; allow {self.target.user}"
                    " passwordless sudo, or deploy as root"
                )
            raise DeployError(f"{what} failed (exit {done.exit_status}): {err[-1500:]}")
        return str(done.stdout or "")

    async def test(self, command: str) -> bool:
        """Whether ``command`` succeeds there (as root)."""
        done = await self.conn.run(f"{self.sudo}sh -c {shlex.quote(command)}", check=False)
        return done.exit_status == 0

    async def check_platform(self) -> str:
        """Refuse hosts the agent cannot run on; their machine and Python, e.g. aarch64 3.11.2."""
        machine = (await self.sh("uname -m", what="uname -m")).strip()
        if machine not in SUPPORTED_MACHINES:
            hint = (
                " (32-bit ARM: no ai-edge-litert or onnxruntime wheels exist; install a 64-bit "
                "OS, docs/deploy.md)"
                if machine.startswith("arm")
                else ""
            )
            raise HostRefused(
                f"{self.target.host} is {machine}; the agent runs on "
                f"{' and '.join(SUPPORTED_MACHINES)} Linux{hint}"
            )
        py = shlex.quote(self.opts.python)
        probe = "import sys; print('%d.%d.%d' % sys.version_info[:3])"
        done = await self.conn.run(f"{py} -c {shlex.quote(probe)}", check=False)
        if done.exit_status != 0:
            raise HostRefused(
                f"{self.target.host} has no {self.opts.python}: install Python 3.11+ "
                "(apt-get install python3 python3-venv)"
            )
        version = str(done.stdout).strip()
        if tuple(int(x) for x in version.split(".")[:2]) < MIN_PYTHON:
            raise HostRefused(
                f"{self.target.host} has Python {version}; the agent needs 3.11+ (Debian 12 / "
                "Raspberry Pi OS bookworm or newer)"
            )
        if not await self.test(f"{py} -c 'import venv, ensurepip'"):
            raise HostRefused(
                f"{self.target.host}: {self.opts.python} lacks venv/ensurepip: "
                "apt-get install python3-venv"
            )
        return f"{machine}, Python {version}"

    async def installed_version(self) -> str | None:
        """The edgefleet version in the service venv, or None when there is none."""
        probe = "from importlib.metadata import version; print(version('edgefleet'))"
        done = await self.conn.run(
            f"{shlex.quote(str(self.python))} -c {shlex.quote(probe)}", check=False
        )
        return str(done.stdout).strip() if done.exit_status == 0 else None

    async def provisioned_id(self) -> str | None:
        """The device id of an existing config with its identity, or None."""
        # `agent provision` keeps the renewable identity in the service's state directory.
        config, cert = self.etc / "agent.toml", self.at(STATE) / "identity" / "device.crt"
        if not await self.test(f"test -f {shlex.quote(str(cert))}"):
            return None
        try:
            text = await self.sh(f"cat {shlex.quote(str(config))}", what="reading agent.toml")
            dev = tomllib.loads(text).get("device", {}).get("id")
        except (DeployError, tomllib.TOMLDecodeError):
            return None
        return str(dev) if dev else None

    async def upload(self, files: list[Path]) -> PurePosixPath:
        """Copy files into a fresh private directory there (SFTP); the directory."""
        remote = PurePosixPath((await self.sh("mktemp -d", what="mktemp")).strip())
        if self.sudo:  # sftp writes as the SSH user: let it, then give the dir back to root
            await self.sh(f"chown {shlex.quote(self.target.user)} {remote}", what="chown")
        async with self.conn.start_sftp_client() as sftp:
            await sftp.put([str(f) for f in files], str(remote))
        return remote

    def pip_env(self, wheelhouse: PurePosixPath | None) -> str:
        """Environment for every pip run there: offline from the copied wheelhouse, if any."""
        if wheelhouse is None:
            return ""
        return f"PIP_NO_INDEX=1 PIP_FIND_LINKS={shlex.quote(str(wheelhouse))} "

    async def agent_running(self) -> bool:
        """Whether the agent runs: systemd's view, or the --start-command pid file's."""
        if self.opts.start_command is None:
            return await self.test("systemctl is-active --quiet edgefleet-agent")
        pid = shlex.quote(str(self.state / PID_FILE))
        return await self.test(f'test -f {pid} && kill -0 "$(cat {pid})"')

    async def start(self) -> None:
        """Start the agent: systemd's unit, or --start-command in the background (nohup)."""
        if self.opts.start_command is None:
            await self.sh("systemctl enable --now edgefleet-agent", what="systemctl enable")
            return
        cmd = self.opts.start_command.format(
            python=shlex.quote(str(self.python)),
            config=shlex.quote(str(self.etc / "agent.toml")),
            root=shlex.quote(str(self.root)),
            venv=shlex.quote(str(self.venv)),
        )
        log, pid = shlex.quote(str(self.state / LOG_FILE)), shlex.quote(str(self.state / PID_FILE))
        # setsid: the agent leads its own session, so it outlives the SSH channel and one
        # kill of its process group stops all it started.
        await self.sh(
            f"cd / && setsid nohup sh -c {shlex.quote(cmd)} >{log} 2>&1 </dev/null & "
            f"echo $! > {pid}",
            what="starting the agent",
        )


async def _connect(target: Target, opts: DeployOptions) -> asyncssh.SSHClientConnection:
    """Connect with host-key checking; ``accept_new_host_keys`` trusts a host never seen."""
    import asyncssh

    known = opts.known_hosts.expanduser()
    keys = [str(opts.identity.expanduser())] if opts.identity is not None else ()
    if opts.accept_new_host_keys and not _known(known, target):
        key = await asyncio.wait_for(
            asyncssh.get_server_host_key(target.host, target.port), opts.connect_timeout
        )
        if key is None:
            raise DeployError(f"{target.host} offered no host key")
        name = target.host if target.port == 22 else f"[{target.host}]:{target.port}"
        known.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with known.open("a") as f:
            f.write(f"{name} {key.export_public_key().decode().strip()}\n")
    try:
        return await asyncio.wait_for(
            asyncssh.connect(
                target.host,
                target.port,
                username=target.user,
                known_hosts=str(known) if known.exists() else (),
                client_keys=keys,
            ),
            opts.connect_timeout,
        )
    except asyncssh.HostKeyNotVerifiable as exc:
        raise DeployError(
            f"{target.host}'s host key is not in {known} or does not match it ({exc.reason}); "
            "check it (ssh-keyscan) and add it, or pass --accept-new-host-keys for a host never "
            "seen before"
        ) from None
    except asyncssh.PermissionDenied:
        raise DeployError(
            f"{target.label} refused our keys; check the key (--identity FILE or the ssh-agent) "
            "is in its authorized_keys"
        ) from None
    except (OSError, TimeoutError, asyncssh.Error) as exc:
        raise DeployError(
            f"cannot connect to {target.label}: {exc or type(exc).__name__}"
        ) from None


def _known(path: Path, target: Target) -> bool:
    """Whether known_hosts has any key for this host (then a mismatch is an error, not new)."""
    import asyncssh

    if not path.is_file():
        return False
    name = target.host if target.port == 22 else f"[{target.host}]:{target.port}"
    found = asyncssh.read_known_hosts(str(path)).match(name, "", target.port)
    return any(bool(group) for group in found[:3])


Step = Callable[[str], None]


async def deploy_host(
    target: Target,
    opts: DeployOptions,
    files: list[Path],
    version: str,
    step: Step,
) -> HostResult:
    """Deploy to one host; a failure is its result, never an exception."""
    started = time.monotonic()
    result = HostResult(target, version=version)
    try:
        await _deploy_host(target, opts, files, version, step, result)
    except EdgefleetError as exc:
        result.status, result.detail = "failed", str(exc)
    except Exception as exc:  # one host's surprise must not stop the others
        result.status, result.detail = "failed", f"{type(exc).__name__}: {exc}"
    result.seconds = time.monotonic() - started
    return result


async def _deploy_host(  # noqa: PLR0917 - private, one call site
    target: Target,
    opts: DeployOptions,
    files: list[Path],
    version: str,
    step: Step,
    result: HostResult,
) -> None:
    step("connecting")
    conn = await _connect(target, opts)
    async with conn:
        h = _Host(conn, target, opts)
        step("checking the platform")
        result.detail = await h.check_platform()
        step("reading what is installed")
        have = await h.installed_version()
        device = await h.provisioned_id()
        unit = await h.test(f"test -f {shlex.quote(str(h.at(UNIT)))}")
        changed = not (have == version and device is not None and unit)
        if changed:
            await _install(h, opts, files, version, step, have, device)
            device = await h.provisioned_id()
            if device is None:
                raise DeployError(f"no identity in {h.etc} after provisioning")
        result.device_id = device
        if opts.install_root != PurePosixPath("/") and opts.start_command is None:
            result.status = "installed" if changed else "unchanged"
            result.detail = "installed into a staging root; not started (no --start-command)"
            return
        running = await h.agent_running()
        if not running:
            step("starting the agent")
            await h.start()
        assert device is not None
        step(f"waiting for {device} online")
        deadline = time.monotonic() + opts.online_timeout
        while not await asyncio.to_thread(device_online, opts, device):
            if time.monotonic() > deadline:
                raise DeployError(
                    f"{device} did not come online in the cloud within {opts.online_timeout:.0f}"
                    " s; on the device: journalctl -u edgefleet-agent (or the --start-command "
                    f"log {h.state / LOG_FILE})"
                )
            await asyncio.sleep(0.5)
        result.status = "deployed" if changed or not running else "unchanged"
        result.detail = "" if changed or running else "agent was stopped: started"


async def _install(  # noqa: PLR0917 - private, one call site
    h: _Host,
    opts: DeployOptions,
    files: list[Path],
    version: str,
    step: Step,
    have: str | None,
    device: str | None,
) -> None:
    """Copy, make the venv, pip install, provision, install the unit: what is missing."""
    remote: PurePosixPath | None = None
    if files:
        step("copying the wheel")
        remote = await h.upload(files)
    wheelhouse = remote if opts.wheelhouse is not None else None
    if opts.wheel is not None or not opts.from_index:
        assert remote is not None
        spec = f"edgefleet[edge] @ file://{remote / files[0].name}"
        package = str(remote / files[0].name)  # install adds the edge extra to a wheel file
    else:
        spec = package = f"edgefleet[edge]=={version}"
    try:
        if have is None:
            step("making the venv")
            await h.sh(
                f"mkdir -p {shlex.quote(str(h.venv.parent))} && "
                f"{shlex.quote(opts.python)} -m venv {shlex.quote(str(h.venv))}",
                what="python3 -m venv",
            )
        if have != version:
            step(f"pip install edgefleet {version}")
            await h.sh(
                f"{h.pip_env(wheelhouse)}{shlex.quote(str(h.python))} -m pip install -q "
                f"--disable-pip-version-check --upgrade {shlex.quote(spec)}",
                what="pip install",
            )
        edgefleet = shlex.quote(str(h.venv / "bin" / "edgefleet"))
        if device is None:
            step("provisioning")
            claim = await asyncio.to_thread(make_claim_token, opts)
            cloud = shlex.quote(opts.device_cloud or opts.cloud)
            # The token comes on stdin, not in argv: argv is visible to every user (ps).
            await h.sh(
                f"read -r EDGEFLEET_CLAIM_TOKEN && export EDGEFLEET_CLAIM_TOKEN && "
                f"{edgefleet} agent provision --cloud {cloud} "
                f"--config-dir {shlex.quote(str(h.etc))} --data-dir {STATE} --force",
                what="edgefleet agent provision",
                stdin=claim + "\n",
            )
        step("installing the service")
        install = f"{edgefleet} agent install --venv {VENV} --package {shlex.quote(package)}"
        if opts.install_root != PurePosixPath("/"):
            install += f" --root {shlex.quote(str(opts.install_root))}"
        if opts.start_command is not None:
            install += " --no-start"
        await h.sh(h.pip_env(wheelhouse) + install, what="edgefleet agent install")
    finally:
        if remote is not None:
            await h.test(f"rm -rf {shlex.quote(str(remote))}")


# ---------------------------------------------------------------------------- all hosts


async def deploy_all(
    targets: list[Target], opts: DeployOptions, console: Console | None = None
) -> list[HostResult]:
    """Deploy to every host at once, with one progress line each; every host's result."""
    console = console or Console(stderr=True)
    if opts.wheel is not None:
        if not opts.wheel.is_file():
            raise ConfigError(f"--wheel {opts.wheel}: no such file")
        wheel: Path | None = opts.wheel
    elif opts.from_index:
        wheel = None
    else:
        import tempfile

        console.print("building a wheel of this checkout", highlight=False)
        wheel = build_wheel(Path(tempfile.mkdtemp(prefix="edgefleet-wheel-")))
    version = wheel_version(wheel) if wheel is not None else running_version()
    files = [wheel] if wheel is not None else []
    if opts.wheelhouse is not None:
        extra = sorted(p for p in opts.wheelhouse.iterdir() if p.suffix in (".whl", ".gz"))
        if not extra:
            raise ConfigError(f"--wheelhouse {opts.wheelhouse}: no wheels in it")
        files += [p for p in extra if wheel is None or p.name != wheel.name]
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:

        async def one(target: Target) -> HostResult:
            task = progress.add_task(f"{target.label}: waiting", total=1)

            def step(text: str) -> None:
                progress.update(task, description=f"{target.label}: {text}")

            r = await deploy_host(target, opts, files, version, step)
            step(r.status)
            progress.update(task, completed=1)
            return r

        return list(await asyncio.gather(*(one(t) for t in targets)))


def summary(results: list[HostResult]) -> Table:
    """The table printed at the end: one row per host."""
    table = Table("host", "status", "device", "version", "seconds", "detail")
    colour = {"deployed": "green", "unchanged": "cyan", "installed": "yellow", "failed": "red"}
    for r in results:
        table.add_row(
            r.target.label,
            f"[{colour.get(r.status, 'white')}]{r.status}[/]",
            r.device_id or "-",
            r.version or "-",
            f"{r.seconds:.1f}",
            r.detail,
        )
    return table


# ---------------------------------------------------------------------------- the command

app = typer.Typer(add_completion=False)


@app.callback()
def _group() -> None:
    """Deploy the agent over SSH."""
    # A callback keeps this a group even with one command, so `edgefleet agent` can merge it.


@app.command()
def deploy(
    host: Annotated[
        list[str], typer.Option("--host", help="user@device[:port] (repeatable; root by default).")
    ],
    cloud: Annotated[str, typer.Option(help="Base URL of the cloud API.")],
    *,
    token: Annotated[
        str | None,
        typer.Option(envvar="EDGEFLEET_TOKEN", help="An admin API token (claim tokens, online)."),
    ] = None,
    claim_token: Annotated[
        str | None,
        typer.Option(help="A claim token made beforehand (uses >= hosts); else one per host."),
    ] = None,
    fleet: Annotated[str | None, typer.Option(help="The fleet of the claim tokens made.")] = None,
    tag: Annotated[
        list[str] | None, typer.Option("--tag", help="A tag the devices get (repeatable).")
    ] = None,
    wheel: Annotated[
        Path | None, typer.Option(help="The edgefleet wheel to install (default: build one).")
    ] = None,
    from_index: Annotated[
        bool, typer.Option(help="pip install edgefleet[edge] of this version from the index.")
    ] = False,
    wheelhouse: Annotated[
        Path | None,
        typer.Option(help="A directory of wheels to copy; the device installs offline from it."),
    ] = None,
    identity: Annotated[
        Path | None, typer.Option(help="SSH private key (default: the ssh-agent and ~/.ssh).")
    ] = None,
    known_hosts: Annotated[Path, typer.Option(help="The known_hosts file to check against.")] = (
        Path("~/.ssh/known_hosts")
    ),
    accept_new_host_keys: Annotated[
        bool,
        typer.Option(help="Trust and record the key of a host never seen (ssh's accept-new)."),
    ] = False,
    install_root: Annotated[
        str, typer.Option(help="Install under this root on the device (tests, image builds).")
    ] = "/",
    start_command: Annotated[
        str | None,
        typer.Option(
            help="Start the agent with this shell command in the background instead of "
            "systemd ({python}, {config}, {root}, {venv} are filled in)."
        ),
    ] = None,
    device_cloud: Annotated[
        str | None, typer.Option(help="The cloud URL as the devices reach it (default: --cloud).")
    ] = None,
    online_timeout: Annotated[
        float, typer.Option(help="Seconds to wait for each device to come online.")
    ] = 120.0,
) -> None:
    """Install, provision and start the agent on devices over SSH; wait until they are online."""
    import asyncssh  # noqa: F401 - here, so its absence names the deploy extra

    if wheel is not None and from_index:
        raise ConfigError("pass --wheel FILE or --from-index, not both")
    root = PurePosixPath(install_root)
    if not root.is_absolute():
        raise ConfigError(f"--install-root {install_root}: must be an absolute path")
    opts = DeployOptions(
        cloud=cloud, token=token, claim_token=claim_token, fleet=fleet, tags=tuple(tag or ()),
        wheel=wheel, from_index=from_index, wheelhouse=wheelhouse, identity=identity,
        known_hosts=known_hosts.expanduser(), accept_new_host_keys=accept_new_host_keys,
        install_root=root, start_command=start_command, device_cloud=device_cloud,
        online_timeout=online_timeout,
    )  # fmt: skip
    if claim_token is None and (token is None or fleet is None):
        make_claim_token(opts)  # raises the error that says what to pass, before connecting
    targets = [parse_host(h) for h in host]
    results = asyncio.run(deploy_all(targets, opts))
    Console().print(summary(results))
    failed = [r for r in results if r.status == "failed"]
    if failed:
        raise DeployError(
            f"{len(failed)} of {len(results)} host(s) failed: "
            + ", ".join(r.target.label for r in failed)
        )
