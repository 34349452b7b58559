"""`edgefleet agent provision` takes a fresh device to online, over a TLS Mosquitto that needs
a certificate from the project CA; `edgefleet device revoke` cuts it off."""

from __future__ import annotations

import getpass
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from support.cloud_ingest import unique_fleet
from support.edge_agent import AgentProcess

from edgefleet.cloud.app import Cloud, CloudConfig
from edgefleet.cloud.broker import free_port, mosquitto_available
from edgefleet.cloud.broker.production import ProductionMosquitto, write_production_config
from edgefleet.cloud.errors import NotFound
from edgefleet.cloud.identity.ca import ProjectCA
from edgefleet.cloud.identity.service import IdentitySettings

EDGEFLEET = str(Path(sys.executable).parent / "edgefleet")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EDGEFLEET, *args], capture_output=True, text=True, timeout=60, check=False
    )


def _wait(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _online(cloud: Cloud, device: str) -> bool | None:
    assert cloud.store is not None
    try:
        return cloud.store.device(device).online
    except NotFound:
        return None


@pytest.mark.slow(seconds=30)
def test_provision_takes_a_fresh_device_online_and_revoke_cuts_it_off(
    tmp_path: Path, good_bundle: Path, trusted_pub: Path
) -> None:
    if not mosquitto_available():
        pytest.fail("mosquitto is not installed: apt-get install -y mosquitto")
    work = tmp_path / "cloud"
    # The CA the cloud's provisioner will use, made first so the broker can trust it.
    ca = ProjectCA.load_or_create(work / "identity" / "ca")
    server_key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "server.pem").write_bytes(ca.issue_server_cert(["127.0.0.1"], server_key))
    (tmp_path / "server.key").write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cfg = write_production_config(
        tmp_path / "broker",
        ca=ca.cert_path,
        cert=tmp_path / "server.pem",
        key=tmp_path / "server.key",
        crl=ca.crl_pem([]),
        tls_host="127.0.0.1",
        tls_port=free_port(),
        local_port=free_port(),
        user=getpass.getuser(),
    )
    broker = ProductionMosquitto(cfg).start()
    fleet = unique_fleet()
    cloud = Cloud(
        CloudConfig(
            workdir=work,
            broker_url=cfg.local_url(),
            http_port=0,
            trusted_keys=(trusted_pub,),
            node_id=f"cloud-{fleet}",
            dashboard=None,
            broker_dir=cfg.directory,
            identity=IdentitySettings(
                directory=work / "identity",
                device_broker_url=f"mqtts://127.0.0.1:{cfg.tls_port}",
            ),
        )
    )
    agent: AgentProcess | None = None
    try:
        cloud.start()
        admin = ("--cloud", cloud.http_url, "--token", str(cloud.admin_token))

        made = _run("device", "claim-token", "--fleet", fleet, "--tag", "lab", *admin)
        assert made.returncode == 0, made.stderr
        claim = made.stdout.strip()
        etc = tmp_path / "etc"
        done = _run(
            "agent", "provision", "--cloud", cloud.http_url, "--token", claim,
            "--device-id", "pi-e2e", "--config-dir", str(etc), "--bundle", str(good_bundle),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        config = etc / "agent.toml"
        check = _run("agent", "check", "-c", str(config), "--windows", "1")
        assert check.returncode == 0, check.stdout + check.stderr
        assert f"mqtts://127.0.0.1:{cfg.tls_port}" in check.stdout

        agent = AgentProcess(config, tmp_path / "agent.log")
        _wait(lambda: _online(cloud, "pi-e2e") is True, 20, "the provisioned agent online")
        assert cloud.store is not None
        assert list(cloud.store.device("pi-e2e").tags) == ["lab"]
        # Its records carry MACs by the record key it was given, and the ingest accepts them.
        _wait(
            lambda: bool(cloud.store and cloud.store.record_keys("inference", "pi-e2e")),
            15,
            "inference records of pi-e2e",
        )
        assert cloud.store.count("quarantine") == 0
        listed = _run("device", "list", *admin)
        assert "pi-e2e" in listed.stdout
        assert "active" in listed.stdout

        token = (etc / "device.token").read_text().strip()
        blob = f"{cloud.http_url}/v1/blobs/{'0' * 64}"
        assert httpx.get(blob, headers={"Authorization": f"Bearer {token}"}).status_code == 403
        revoked = _run("device", "revoke", "pi-e2e", *admin)
        assert revoked.returncode == 0, revoked.stderr
        assert "broker access cut" in revoked.stdout
        assert httpx.get(blob, headers={"Authorization": f"Bearer {token}"}).status_code == 401
        # Revoked is offline at once; the broker kicked the session and the CRL refuses every
        # reconnect, so no birth message turns it back online (the agent retries every ~0.2 s).
        assert _online(cloud, "pi-e2e") is False
        assert cloud.store.device("pi-e2e").status_reason == "revoked"
        time.sleep(3)
        assert _online(cloud, "pi-e2e") is False
        assert "disconnected from mqtts://" in (tmp_path / "agent.log").read_text()
    finally:
        if agent is not None:
            agent.kill()
        cloud.stop()
        broker.kill()
