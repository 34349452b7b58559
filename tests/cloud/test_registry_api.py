"""Registry, assignments and the HTTP API of an in-process cloud on a real Mosquitto."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.cloud_bundles import make_archive
from support.cloud_devices import TestDevice
from support.cloud_ingest import unique_fleet
from typer.testing import CliRunner

from edgefleet.cloud import models_cli
from edgefleet.cloud.app import Cloud, CloudConfig
from edgefleet.cloud.broker import MosquittoBroker
from edgefleet.cloud.cli import app as cloud_cli
from edgefleet.protocol import signing
from edgefleet.protocol.messages import AssignModel


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Ed25519PrivateKey, Path]:
    priv, pub = signing.generate_keypair(tmp_path / "keys")
    return signing.load_private_key(priv), pub


@pytest.fixture
def cloud(tmp_path: Path, mosquitto: MosquittoBroker, keys):
    fleet = unique_fleet()
    config = CloudConfig(
        workdir=tmp_path / "cloud",
        broker_url=mosquitto.url,
        http_port=0,
        trusted_keys=(keys[1],),
        fleet=fleet,
        node_id=f"cloud-{fleet}",
        batch_max_delay_s=0.02,
    )
    with Cloud(config) as c:
        yield c


def test_push_list_download_with_range(cloud: Cloud, keys, tmp_path: Path) -> None:
    archive = make_archive(tmp_path, keys[0])
    data = archive.read_bytes()
    with httpx.Client(base_url=cloud.http_url) as http:
        r = http.post("/v1/models", content=data, headers={"content-type": "application/gzip"})
        assert r.status_code == 201, r.text
        m = r.json()
        assert (m["name"], m["version"], m["sha256"]) == (
            "kws",
            "1.0.0",
            hashlib.sha256(data).hexdigest(),
        )
        assert m["metrics"] == {"accuracy": 0.93}
        assert m["lineage"]["dataset"] == "unit"
        assert http.post("/v1/models", content=data).status_code == 201  # idempotent
        listed = http.get("/v1/models").json()
        assert [x["version"] for x in listed] == ["1.0.0"]
        full = http.get("/v1/models/kws/1.0.0/bundle")
        assert full.content == data
        part = http.get(f"/v1/blobs/{m['sha256']}", headers={"Range": "bytes=10-"})
        assert part.status_code == 206
        assert part.content == data[10:]
        assert http.get("/v1/models/kws/9.9.9").json()["reason"] == "not-found"
        assert "/v1/assignments" in http.get("/openapi.json").json()["paths"]


def test_registry_refuses_untrusted_and_tampered(cloud: Cloud, tmp_path: Path) -> None:
    stranger = Ed25519PrivateKey.generate()
    data = make_archive(tmp_path, stranger).read_bytes()
    with httpx.Client(base_url=cloud.http_url) as http:
        r = http.post("/v1/models", content=data)
        assert r.status_code == 422
        assert r.json()["reason"] == "untrusted-key"
        r = http.post("/v1/models", content=b"\x1f\x8b not a tarball")
        assert r.status_code == 422
        assert r.json()["reason"] == "bad-archive"
        assert http.get("/v1/models").json() == []


def test_assign_publishes_and_tracks_acks(cloud: Cloud, keys, tmp_path: Path, mosquitto) -> None:
    data = make_archive(tmp_path, keys[0]).read_bytes()
    fleet = cloud.config.fleet
    assert fleet is not None
    devs = [TestDevice(mosquitto.host, mosquitto.port, f"{fleet}-d{i}", fleet) for i in range(3)]
    try:
        for d in devs:
            d.birth()
        with httpx.Client(base_url=cloud.http_url) as http:
            assert http.post("/v1/models", content=data).status_code == 201
            assert devs[0].wait(lambda: len(http.get("/v1/devices").json()) == 3)
            http.put(f"/v1/devices/{devs[2].device_id}/tags", json={"tags": ["canary"]})
            r = http.post("/v1/assignments", json={"model": "kws@1.0.0", "all": True})
            assert r.status_code == 201, r.text
            a = r.json()
            assert {t["state"] for t in a["targets"]} <= {"sent", "received"}
            for d in devs:
                assert d.wait(lambda d=d: len(d.commands) == 1)
                cmd = d.commands[0]
                assert isinstance(cmd, AssignModel)
                assert (cmd.command_id, cmd.model, cmd.version) == (a["id"], "kws", "1.0.0")
                assert (cmd.sha256, cmd.size) == (hashlib.sha256(data).hexdigest(), len(data))
                assert http.get(cmd.url.replace(cloud.http_url, "")).content == data
            devs[0].send_ack(devs[0].commands[0], "received")
            devs[0].send_ack(devs[0].commands[0], "succeeded")
            devs[1].send_ack(devs[1].commands[0], "refused", "bad-signature")
            for d in devs:
                assert d.wait_outbox_empty()

            def states() -> dict[str, tuple[str, str | None]]:
                got = http.get(f"/v1/assignments/{a['id']}").json()
                return {t["device_id"]: (t["state"], t["reason"]) for t in got["targets"]}

            assert devs[0].wait(lambda: states()[devs[1].device_id][0] == "refused")
            assert states() == {
                devs[0].device_id: ("succeeded", None),
                devs[1].device_id: ("refused", "bad-signature"),
                devs[2].device_id: ("sent", None),
            }
            by_tag = http.post("/v1/assignments", json={"model": "kws@1.0.0", "tag": "canary"})
            assert [t["device_id"] for t in by_tag.json()["targets"]] == [devs[2].device_id]
            bad = http.post("/v1/assignments", json={"model": "kws@1.0.0", "devices": ["ghost"]})
            assert bad.status_code == 422
            assert bad.json()["reason"] == "no-targets"
            assert (
                http.post("/v1/assignments", json={"model": "kws@2.0.0", "all": True}).status_code
                == 404
            )
            metrics = http.get("/metrics").text
            assert "edgefleet_devices_online 3.0" in metrics
            assert "edgefleet_ingest_records_total" in metrics
    finally:
        for d in devs:
            d.close()


def test_cli_push_assign_devices(cloud: Cloud, keys, tmp_path: Path, mosquitto) -> None:
    archive = make_archive(tmp_path, keys[0], version="2.0.0")
    fleet = cloud.config.fleet
    assert fleet is not None
    dev = TestDevice(mosquitto.host, mosquitto.port, f"{fleet}-cli", fleet)
    try:
        dev.birth()
        runner = CliRunner()
        r = runner.invoke(models_cli.app, ["push", str(archive), "--cloud", cloud.http_url])
        assert r.exit_code == 0, r.output
        assert "registered kws@2.0.0" in r.output

        def listed() -> bool:
            r = runner.invoke(cloud_cli, ["devices", "--cloud", cloud.http_url, "--json"])
            return dev.device_id in {d["device_id"] for d in json.loads(r.output)}

        assert dev.wait(listed)
        table = runner.invoke(cloud_cli, ["devices", "--cloud", cloud.http_url])
        assert table.exit_code == 0
        assert "1 devices" in table.output
        r = runner.invoke(
            models_cli.app,
            ["assign", "kws@2.0.0", "--device", dev.device_id, "--cloud", cloud.http_url],
        )
        assert r.exit_code == 0, r.output
        assert dev.device_id in r.output
        assert dev.wait(lambda: len(dev.commands) == 1)
        r = runner.invoke(models_cli.app, ["assign", "kws@2.0.0", "--cloud", cloud.http_url])
        assert r.exit_code != 0
        assert "exactly one of" in str(r.exception)
        stranger = make_archive(tmp_path / "s", Ed25519PrivateKey.generate())
        r = runner.invoke(models_cli.app, ["push", str(stranger), "--cloud", cloud.http_url])
        assert r.exception is not None
        assert getattr(r.exception, "reason", None) == "untrusted-key"
    finally:
        dev.close()
