"""A cloud with federated runs and real agents that train on demand (their own SuperNodes)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgefleet.cloud.app import Cloud, CloudConfig
from edgefleet.cloud.client import CloudClient
from edgefleet.cloud.fl.runs.service import FlServiceSettings
from edgefleet.edge.fl.buffer import TrainingBuffer
from edgefleet.edge.fl.errors import NoTrainingData
from edgefleet.protocol import bundle
from support.edge_agent import AgentThread, agent_toml, make_config
from support.models_zoo import Zoo
from support.trust import command_private_key

MODEL = "vibration-anomaly"
FL_KEYS = """
[fl]
enabled = true
mode = "on-demand"
max_cpu_percent = 0.0   # the shared test machine is always busy
sample_every_windows = 1
min_samples = 32
end_grace_s = 15.0
"""


def wait_for(pred: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``pred`` until it returns something true; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@dataclass
class FlSetup:
    """The cloud, its HTTP client and the agents of one test."""

    cloud: Cloud
    client: CloudClient
    agents: dict[str, AgentThread] = field(default_factory=dict)

    def buffered(self, device: str, input_dim: int) -> int:
        """Training samples of the model the device has buffered so far."""
        db = self.agents[device].agent.cfg.outbox_path
        try:
            return len(TrainingBuffer(db).load(MODEL, input_dim))
        except NoTrainingData:
            return 0

    def stop(self) -> None:
        """Stop every agent still running, then the cloud."""
        for a in self.agents.values():
            if not a.loop.is_closed():
                a.stop()
        self.cloud.stop()


def start_setup(
    zoo: Zoo,
    broker_url: str,
    port: int,
    tmp_path: Path,
    devices: tuple[str, ...],
    *,
    fl_keys: dict[str, str] | None = None,
) -> FlSetup:
    """A cloud that signs federated results with the zoo's key; one agent per device.

    ``fl_keys``: a device's own ``[fl]`` section instead of :data:`FL_KEYS`.
    """
    cloud = Cloud(
        CloudConfig(
            command_key=command_private_key(),
            workdir=tmp_path / "cloud",
            broker_url=broker_url,
            http_port=0,
            fleet="default",
            batch_max_delay_s=0.02,
            trusted_keys=(zoo.public_key,),
            fl=FlServiceSettings(workdir=tmp_path / "fl", signing_key=zoo.private_key),
        )
    ).start()
    setup = FlSetup(cloud, CloudClient(cloud.http_url, token=cloud.admin_token))
    try:
        v1 = zoo.builds[MODEL].bundle("litert")
        for i, device in enumerate(devices):
            text = agent_toml(
                tmp_path / device, port, device=device, bundle=v1, keys=[zoo.public_key],
                extra=(fl_keys or {}).get(device, FL_KEYS),
            )  # fmt: skip
            text = text.replace("seed = 3", f"seed = {20 + i}")
            setup.agents[device] = AgentThread(make_config(text))
        for a in setup.agents.values():
            a.wait_ready()
    except BaseException:
        setup.stop()
        raise
    return setup


def push_zoo_bundle(setup: FlSetup, zoo: Zoo, tmp_path: Path) -> None:
    """Register the version the agents run, so the federated one is judged against it."""
    archive = tmp_path / "v1.tar.gz"
    bundle.pack_bundle(zoo.builds[MODEL].bundle("litert"), archive)
    setup.client.push(archive.read_bytes())


def run_state(client: CloudClient, run_id: str) -> dict[str, Any]:
    """``GET /v1/fl/runs/{id}``."""
    doc: dict[str, Any] = client.request("GET", f"/v1/fl/runs/{run_id}")
    return doc
