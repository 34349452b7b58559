"""A loopback federated fleet: SuperLink, supervised SuperNodes, agent databases with buffers."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgefleet.cloud.fl.superlink.process import SuperLink
from edgefleet.edge.fl.buffer import encode_sample
from edgefleet.edge.fl.config import FlConfig, supernode_command
from edgefleet.edge.fl.supervisor import SuperNodeSupervisor
from edgefleet.edge.outbox import Outbox


def fill_agent_db(path: Path, model: str, x: np.ndarray, y: np.ndarray | None = None) -> Path:
    """An agent outbox database whose training buffer holds ``x`` (the agent's own writer)."""
    outbox = Outbox(path, training_samples_max=max(1000, len(x)))
    try:
        for i in range(len(x)):
            xb, yb = encode_sample(x[i], None if y is None else int(y[i]))
            outbox.add_training_sample(float(i), model, xb, yb)
    finally:
        outbox.close()
    return path


def vibration_windows(seed: int, n: int) -> np.ndarray:
    """Standardised, flattened vibration windows of one simulated device."""
    from edgefleet.models.vibration_anomaly import CHANNELS, WINDOW, _device_windows
    from edgefleet.models.windows import channel_stats, standardize

    w = _device_windows(seed, n)
    mean, std = channel_stats(w)
    return standardize(w, mean, std).reshape(-1, WINDOW * len(CHANNELS)).astype(np.float32)


@dataclass
class Fleet:
    """A SuperLink and one supervised SuperNode per agent database."""

    link: SuperLink
    supervisors: list[SuperNodeSupervisor] = field(default_factory=list)

    def add_node(self, db: Path, name: str, **cfg: object) -> SuperNodeSupervisor:
        """Start a supervised SuperNode that trains on ``db``."""
        config = FlConfig(
            enabled=True,
            superlink=self.link.address,
            restart_min_s=0.5,
            max_cpu_percent=0.0,  # the shared test machine is always busy
            **cfg,  # type: ignore[arg-type]
        )
        log = logging.getLogger(f"test.fl.{name}")
        sup = SuperNodeSupervisor(
            lambda: supernode_command(config, db), log, restart_min_s=0.5, restart_max_s=2.0
        ).start()
        self.supervisors.append(sup)
        return sup

    def stop(self) -> None:
        """Stop every SuperNode, then the SuperLink."""
        for sup in self.supervisors:
            sup.stop()
        self.link.stop()
