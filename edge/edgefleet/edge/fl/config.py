"""The agent's ``[fl]`` settings: whether a SuperNode runs, where its SuperLink is, the policy."""

from __future__ import annotations

import shutil
import socket
import sys
from pathlib import Path
from typing import Annotated, Literal

from msgspec import Meta, Struct

from edgefleet.edge.fl.errors import FlConfigError
from edgefleet.edge.fl.policy import TrainingPolicy

PositiveFloat = Annotated[float, Meta(gt=0)]


class FlConfig(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Settings of on-device federated learning (off unless ``enabled``).

    The agent owns a :class:`~edgefleet.edge.fl.supervisor.SuperNodeSupervisor` built from
    these; TLS needs ``root_certificates`` (and ``insecure = false``), SuperNode
    authentication the two ``auth_*`` key files registered with ``flwr supernode register``.
    """

    enabled: bool = False
    # "on-demand": a SuperNode runs only for a `start-training` command (until its deadline or
    # the end of the run); "always": one runs from start to stop, dialling `superlink`.
    mode: Literal["on-demand", "always"] = "on-demand"
    superlink: str = "127.0.0.1:9092"
    insecure: bool = True
    root_certificates: str | None = None
    auth_private_key: str | None = None
    auth_public_key: str | None = None
    # Port of the SuperNode's ClientAppIo API; one per SuperNode on a host (0: a free one).
    clientappio_port: Annotated[int, Meta(ge=0, le=65535)] = 0
    supernode_bin: str = "flower-supernode"
    restart_min_s: PositiveFloat = 1.0
    restart_max_s: PositiveFloat = 60.0
    # A run that lasts this long resets the backoff.
    stable_after_s: PositiveFloat = 60.0
    max_cpu_percent: Annotated[float, Meta(ge=0, le=100)] = 80.0
    max_temperature_c: Annotated[float, Meta(ge=0)] = 75.0
    window: str = ""
    yield_to_inference: bool = True
    # Longest pause between two training batches while the CPU is above max_cpu_percent.
    max_pause_s: Annotated[float, Meta(ge=0)] = 5.0
    # One model input goes into the training buffer every N windows (0: one per drift sketch).
    sample_every_windows: Annotated[int, Meta(ge=0)] = 0
    # A start-training command is refused while fewer samples of the model are buffered.
    min_samples: Annotated[int, Meta(ge=1)] = 1
    # How long an on-demand SuperNode may run when the command gives no deadline.
    deadline_s: PositiveFloat = 900.0
    # After the last round the SuperNode stays this long: the ClientApp notes the round before
    # its reply leaves, and Flower 1.41 turns a reply the ServerApp has not pulled yet into
    # "Node Unavailable" once the SuperNode unregisters (seen with 3 s on a loaded machine).
    end_grace_s: Annotated[float, Meta(ge=0)] = 30.0

    def __post_init__(self) -> None:
        if self.mode == "always" and self.enabled and not self.superlink:
            raise FlConfigError('fl: mode = "always" needs superlink = "HOST:PORT"')
        if not self.insecure and not self.root_certificates:
            raise FlConfigError("fl: TLS (insecure = false) needs root_certificates")
        if bool(self.auth_private_key) != bool(self.auth_public_key):
            raise FlConfigError("fl: SuperNode authentication needs both auth key files")
        if self.restart_max_s < self.restart_min_s:
            raise FlConfigError("fl: restart_max_s must be at least restart_min_s")
        self.policy()

    def policy(self) -> TrainingPolicy:
        """The training policy these settings describe."""
        return TrainingPolicy(
            max_cpu_percent=self.max_cpu_percent,
            max_temperature_c=self.max_temperature_c,
            window=self.window,
            yield_to_inference=self.yield_to_inference,
            max_pause_s=self.max_pause_s,
        )

    def executable(self) -> str:
        """Absolute path of ``flower-supernode``: next to this Python first, then on PATH."""
        beside = Path(sys.executable).parent / self.supernode_bin
        if beside.is_file():
            return str(beside)
        found = shutil.which(self.supernode_bin)
        if found is None:
            raise FlConfigError(
                f"{self.supernode_bin} is not installed; install edgefleet[fl] on the device"
            )
        return found


def free_port() -> int:
    """A free TCP port on loopback (for a SuperNode's ClientAppIo API)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _toml_value(value: str | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    escaped = value.replace("\\", "\\\\").replace("'", "")
    return f"'{escaped}'"


def node_config_arg(
    db: Path, policy: TrainingPolicy, extra: dict[str, str | float] | None = None
) -> str:
    """The ``--node-config`` string: the database to train on and the policy."""
    entries: dict[str, str | float | bool] = {"db": str(db), **policy.to_node_config()}
    entries.update(extra or {})
    return " ".join(f"{k}={_toml_value(v)}" for k, v in entries.items())


def supernode_command(
    cfg: FlConfig, db: Path, extra: dict[str, str | float] | None = None
) -> list[str]:
    """The full ``flower-supernode`` command line for these settings."""
    port = cfg.clientappio_port or free_port()
    cmd = [cfg.executable(), "--superlink", cfg.superlink, "--port", str(port)]
    if cfg.insecure:
        cmd.append("--insecure")
    else:
        cmd += ["--root-certificates", str(cfg.root_certificates)]
    if cfg.auth_private_key and cfg.auth_public_key:
        cmd += [
            "--auth-supernode-private-key",
            cfg.auth_private_key,
            "--auth-supernode-public-key",
            cfg.auth_public_key,
        ]
    cmd += ["--node-config", node_config_arg(db, cfg.policy(), extra)]
    return cmd
