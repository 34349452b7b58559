"""The whole path: a real cloud assigns a real zoo bundle to three real agents over Mosquitto.

Agents trust only the fleet key; the cloud's registry also trusts a staging key, so a bundle
signed with it gets pushed and assigned, and each agent must refuse it on its own, visibly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from support.cloud_auth import client as auth_client
from support.edge_agent import AgentThread, agent_toml, make_config
from support.models_zoo import Zoo, shared_zoo
from support.trust import command_private_key

from edgefleet.cloud.app import Cloud, CloudConfig
from edgefleet.cloud.auth import DownloadGrants
from edgefleet.cloud.broker import MosquittoBroker
from edgefleet.cloud.client import CloudClient
from edgefleet.protocol import bundle, signing, topics
from edgefleet.protocol.bundle import VerifiedBundle
from edgefleet.protocol.errors import Incompatible
from edgefleet.protocol.messages import AssignModel

MODEL = "vibration-anomaly"
DEVICES = ("pump-1", "pump-2", "pump-3")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Zoo:
    return shared_zoo(tmp_path_factory.getbasetemp().parent)


def resign(src: Path, dest: Path, version: str, key_file: Path) -> VerifiedBundle:
    """The same model files under a new version, signed with ``key_file``."""
    dest.mkdir(parents=True)
    manifest = bundle.read_manifest(src)
    for entry in manifest.files:
        (dest / entry.path).parent.mkdir(parents=True, exist_ok=True)
        (dest / entry.path).write_bytes((src / entry.path).read_bytes())
    new = msgspec.structs.replace(manifest, version=version, files=[])
    roles = {f.path: f.role for f in manifest.files}
    return bundle.write_bundle(dest, new, signing.load_private_key(key_file), roles=roles)


def wait_for(
    pred: Callable[[], Any],
    timeout: float = 90,
    what: str = "condition",
    show: Callable[[], Any] | None = None,
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}; last seen: {show() if show else None}")


@pytest.fixture
def fleet(
    zoo: Zoo, mosquitto_factory: Callable[..., MosquittoBroker], tmp_path: Path
) -> Iterator[tuple[Cloud, list[AgentThread], Path]]:
    # A private broker: `--all` must mean these three, not devices of tests sharing a broker.
    mosquitto = mosquitto_factory()
    staging_priv, staging_pub = signing.generate_keypair(tmp_path / "staging")
    v1 = zoo.builds[MODEL].bundle("litert")
    cloud = Cloud(
        CloudConfig(
            workdir=tmp_path / "cloud",
            # The agents trust the test command key (support.trust): this cloud signs with it.
            command_key=command_private_key(),
            broker_url=mosquitto.url,
            http_port=0,
            fleet="default",
            batch_max_delay_s=0.02,
            trusted_keys=(zoo.public_key, staging_pub),
        )
    )
    cloud.start()
    agents: list[AgentThread] = []
    try:
        for i, device in enumerate(DEVICES):
            text = agent_toml(
                tmp_path / device, mosquitto.port, device=device, bundle=v1, keys=[zoo.public_key]
            )
            text = text.replace("seed = 3", f"seed = {10 + i}")
            agents.append(AgentThread(make_config(text)))
        for a in agents:
            a.wait_ready()
        yield cloud, agents, staging_priv
    finally:
        for a in agents:
            a.stop()
        cloud.stop()


def _target_states(client: CloudClient, assignment_id: str) -> dict[str, tuple[str, str | None]]:
    doc = client.request("GET", f"/v1/assignments/{assignment_id}")
    return {t["device_id"]: (t["state"], t["reason"]) for t in doc["targets"]}


@pytest.mark.slow
def test_three_agents_run_an_assigned_bundle_and_refuse_an_untrusted_one(
    fleet: tuple[Cloud, list[AgentThread], Path], zoo: Zoo, tmp_path: Path
) -> None:
    cloud, agents, staging_key = fleet
    client = auth_client(cloud)
    # The fleet reports in: births and health with the model version reach the cloud's state.
    wait_for(
        lambda: {d["device_id"] for d in client.devices() if d["online"]} >= set(DEVICES),
        what="three online devices",
    )

    v1 = zoo.builds[MODEL].bundle("litert")
    good = resign(v1, tmp_path / "v1.1.0", "1.1.0", zoo.private_key)
    rogue = resign(v1, tmp_path / "v1.2.0", "1.2.0", staging_key)
    for b in (good, rogue):
        archive = tmp_path / f"{b.manifest.version}.tar.gz"
        bundle.pack_bundle(b.path, archive)
        client.push(archive.read_bytes())

    ok = client.assign(f"{MODEL}@1.1.0", all=True)
    states = wait_for(
        lambda: (
            (s := _target_states(client, ok["id"]))
            and all(st == "succeeded" for st, _ in s.values())
            and s
        ),
        what="three succeeded acks",
        show=lambda: _target_states(client, ok["id"]),
    )
    assert set(states) == set(DEVICES)
    for a in agents:
        assert a.agent.model_ref == (MODEL, "1.1.0")
    # ... and they keep serving with it: health reports the new version to the cloud.
    wait_for(
        lambda: all(
            d["model_version"] == "1.1.0" for d in client.devices() if d["device_id"] in DEVICES
        ),
        what="health with the new version",
    )

    bad = client.assign(f"{MODEL}@1.2.0", devices=list(DEVICES))
    states = wait_for(
        lambda: (
            (s := _target_states(client, bad["id"]))
            and all(st == "refused" for st, _ in s.values())
            and s
        ),
        what="three refusals",
        show=lambda: _target_states(client, bad["id"]),
    )
    assert {reason for _, reason in states.values()} == {"untrusted-key"}
    for a in agents:
        assert a.agent.model_ref == (MODEL, "1.1.0"), "a refused bundle must change nothing"


@pytest.mark.slow(seconds=120)
def test_a_bundle_for_another_sensor_is_refused_by_the_cloud_and_by_the_agent(
    fleet: tuple[Cloud, list[AgentThread], Path], zoo: Zoo, tmp_path: Path
) -> None:
    cloud, agents, _ = fleet
    client = auth_client(cloud)
    # Each agent's birth tells the cloud its source: 400 Hz vibration, channels, runtimes.
    profiles = wait_for(
        lambda: (
            (p := {d["device_id"]: d["profile"] for d in client.devices() if d["profile"]})
            and set(p) >= set(DEVICES)
            and p
        ),
        what="three device profiles",
    )
    assert profiles["pump-1"]["sample_rate_hz"] == 400.0
    assert profiles["pump-1"]["task"] == "anomaly"
    assert "litert" in profiles["pump-1"]["runtimes"]

    activity = zoo.builds["activity"].bundle("litert")  # a 50 Hz wrist classifier
    archive = tmp_path / "activity.tar.gz"
    sha = bundle.pack_bundle(activity, archive)
    client.push(archive.read_bytes())
    with pytest.raises(Incompatible) as refused:
        client.assign("activity@1.0.0", devices=["pump-1"])
    for part in ("pump-1", "50 Hz", "400 Hz", "anomaly"):
        assert part in str(refused.value)
    assert client.request("GET", "/v1/assignments") == []

    # The agent refuses it too if it arrives anyway (an older cloud, a hand-made command).
    assert cloud.publisher is not None
    # The URL with a download grant, as the cloud makes them (the agent has no API token).
    grants = DownloadGrants.load_or_create(cloud.config.workdir / "keys" / "grant.key")
    cmd = AssignModel(
        device_id=cloud.node.node_id, boot_id=cloud.node.boot_id, seq=cloud.node.next_seq(),
        sent_at=time.time(), command_id="by-hand-1", model="activity", version="1.0.0",
        url=grants.url(cloud.http_url, sha, "pump-1"), sha256=sha, size=archive.stat().st_size,
        runtime="litert",
    )  # fmt: skip
    cloud.publisher.publish(topics.command("default", "pump-1", "assign-model"), cmd)

    def final_ack() -> dict[str, Any] | None:
        acks = client.request("GET", "/v1/telemetry/command_acks?device=pump-1")
        done = [a for a in acks if a["command_id"] == "by-hand-1" and a["status"] != "received"]
        return done[0] if done else None

    ack = wait_for(final_ack, what="pump-1's answer to the hand-made command")
    assert (ack["status"], ack["reason"]) == ("refused", "incompatible")
    assert "50 Hz" in ack["detail"]
    assert "400 Hz" in ack["detail"]
    assert agents[0].agent.model_ref == (MODEL, "1.0.0"), "a refused bundle must change nothing"
