"""Registry, assignments and the HTTP API of an in-process cloud on a real Mosquitto."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.cloud_auth import api, token_env
from support.cloud_bundles import make_archive
from support.cloud_devices import TestDevice
from support.cloud_ingest import unique_fleet
from typer.testing import CliRunner

from edgefleet.cloud import devices_cli, models_cli
from edgefleet.cloud.app import Cloud, CloudConfig
from edgefleet.cloud.broker import MosquittoBroker
from edgefleet.cloud.cli import app as cloud_cli
from edgefleet.protocol import codec, signing, topics
from edgefleet.protocol.bundle import pack_bundle, write_bundle
from edgefleet.protocol.manifest import BundleManifest, Postprocessing, Preprocessing, TensorSpec
from edgefleet.protocol.messages import AssignModel, DeviceProfile, Status


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
    with api(cloud) as http:
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
    with api(cloud) as http:
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
        with api(cloud) as http:
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
                # The URL's grant admits this device, with no token, for this bundle only.
                assert f"device={d.device_id}" in cmd.url
                assert httpx.get(cmd.url).content == data
                other = cmd.url.replace(f"device={d.device_id}", "device=someone-else")
                assert httpx.get(other).json()["reason"] == "bad-grant"
                assert httpx.get(cmd.url.split("?")[0]).status_code == 401
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
            assert devs[2].commands[0].rollback is False
            # An operator's deliberate rollback is said in the signed command itself.
            by_tag = http.post(
                "/v1/assignments", json={"model": "kws@1.0.0", "tag": "canary", "rollback": True}
            )
            assert [t["device_id"] for t in by_tag.json()["targets"]] == [devs[2].device_id]
            assert devs[2].wait(lambda: len(devs[2].commands) == 2)
            assert devs[2].commands[1].rollback is True
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
        runner = CliRunner(env=token_env(cloud))
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


# ------------------------------------------------------------------ compatibility, errors, deletes


def _sensor_archive(tmp: Path, key: Ed25519PrivateKey, *, name: str, rate: float) -> Path:
    """A signed bundle whose manifest is a real 64 x 3 window classifier at ``rate`` Hz."""
    d = tmp / f"{name}-1.0.0"
    d.mkdir(parents=True)
    (d / "model.onnx").write_bytes(b"not-parsed-by-the-cloud")
    manifest = BundleManifest(
        name=name, version="1.0.0", runtime="onnx", model_file="model.onnx",
        inputs=[TensorSpec(name="window", dtype="float32", shape=[-1, 64, 3])],
        outputs=[TensorSpec(name="probs", dtype="float32", shape=[-1, 4])],
        preprocessing=Preprocessing(
            kind="window", channels=["ax", "ay", "az"], window=64, hop=16, sample_rate_hz=rate
        ),
        postprocessing=Postprocessing(kind="classify"),
        labels=["idle", "walk", "run", "fall"],
    )  # fmt: skip
    write_bundle(d, manifest, key)
    archive = tmp / f"{name}.tar.gz"
    pack_bundle(d, archive)
    return archive


def _birth_with_profile(dev: TestDevice, profile: DeviceProfile) -> None:
    msg = Status(
        device_id=dev.device_id, boot_id=dev.boot_id, seq=0, sent_at=time.time(),
        state="online", reason="start", agent_version="test-2.0", profile=profile,
    )  # fmt: skip
    dev.publish_raw(topics.status(dev.fleet, dev.device_id), codec.encode(msg), retain=True)


def _offline(dev: TestDevice) -> None:
    msg = Status(
        device_id=dev.device_id, boot_id=dev.boot_id, seq=0, sent_at=time.time(),
        state="offline", reason="shutdown", agent_version="test-1.0",
    )  # fmt: skip
    dev.publish_raw(topics.status(dev.fleet, dev.device_id), codec.encode(msg), retain=True)


def test_every_http_error_has_the_documented_shape(cloud: Cloud) -> None:
    with api(cloud) as http:
        cases = [
            (http.post("/v1/assignments", json={"all": True}), 422, "invalid-request", "model"),
            (http.get("/v1/telemetry/health?limit=0"), 422, "invalid-request", "limit"),
            (http.get("/v1/no-such-route"), 404, "not-found", "/v1/no-such-route"),
            (http.patch("/v1/fleet"), 405, "method-not-allowed", "PATCH"),
            (http.get("/v1/devices/ghost"), 404, "not-found", "ghost"),
        ]
        for r, status, reason, mentions in cases:
            assert r.status_code == status, r.text
            body = r.json()
            assert set(body) == {"reason", "detail"}, body
            assert body["reason"] == reason
            assert isinstance(body["detail"], str), body
            assert mentions in body["detail"], body


def test_cloud_refuses_a_bundle_that_does_not_fit_before_sending(
    cloud: Cloud, keys, tmp_path: Path, mosquitto
) -> None:
    fleet = cloud.config.fleet
    assert fleet is not None
    vib = TestDevice(mosquitto.host, mosquitto.port, f"{fleet}-vib", fleet)
    old = TestDevice(mosquitto.host, mosquitto.port, f"{fleet}-old", fleet)
    try:
        _birth_with_profile(
            vib, DeviceProfile(channels=["ax", "ay", "az"], sample_rate_hz=400.0, runtimes=["onnx"])
        )
        old.birth()  # an agent before profiles: the cloud cannot check its source
        runner = CliRunner(env=token_env(cloud))
        with api(cloud) as http:
            for rate, name in ((50.0, "activity"), (400.0, "vibclass")):
                archive = _sensor_archive(tmp_path, keys[0], name=name, rate=rate)
                assert http.post("/v1/models", content=archive.read_bytes()).status_code == 201
            assert vib.wait(lambda: len(http.get("/v1/devices").json()) == 2)
            assert vib.wait(lambda: http.get(f"/v1/devices/{vib.device_id}").json()["profile"])
            r = http.post(
                "/v1/assignments", json={"model": "activity@1.0.0", "devices": [vib.device_id]}
            )
            assert r.status_code == 409, r.text
            assert r.json()["reason"] == "incompatible"
            detail = r.json()["detail"]
            for part in (vib.device_id, "50 Hz", "400 Hz"):
                assert part in detail
            assert http.get("/v1/assignments").json() == []  # nothing stored ...
            time.sleep(0.5)
            assert vib.commands == []  # ... and nothing sent
            # The CLI says the same and exits with the "refused" code.
            r2 = runner.invoke(
                models_cli.app,
                ["assign", "activity@1.0.0", "--device", vib.device_id, "--cloud", cloud.http_url],
            )
            assert r2.exit_code != 0
            assert getattr(r2.exception, "reason", None) == "incompatible"
            assert getattr(r2.exception, "exit_code", None) == 5
            assert "400 Hz" in str(r2.exception)
            # A bundle that fits goes out; the old device's target says what was not checked.
            ok = http.post(
                "/v1/assignments",
                json={"model": "vibclass@1.0.0", "devices": [vib.device_id, old.device_id]},
            )
            assert ok.status_code == 201, ok.text
            targets = {t["device_id"]: t for t in ok.json()["targets"]}
            assert targets[vib.device_id]["detail"] is None
            note = targets[old.device_id]["detail"]
            for part in ("not checked", "sample rate", "runtime"):
                assert part in note
            assert vib.wait(lambda: len(vib.commands) == 1)
    finally:
        vib.close()
        old.close()


def test_delete_a_model_version_and_forget_a_device(
    cloud: Cloud, keys, tmp_path: Path, mosquitto
) -> None:
    fleet = cloud.config.fleet
    assert fleet is not None
    dev = TestDevice(mosquitto.host, mosquitto.port, f"{fleet}-del", fleet)
    runner = CliRunner(env=token_env(cloud))
    try:
        dev.birth()
        dev.send_readings(3)
        data = make_archive(tmp_path, keys[0]).read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        with api(cloud) as http:
            assert http.post("/v1/models", content=data).status_code == 201
            assert dev.wait(lambda: len(http.get("/v1/devices").json()) == 1)
            assert dev.wait_outbox_empty()
            a = http.post("/v1/assignments", json={"model": "kws@1.0.0", "all": True}).json()
            assert dev.wait(lambda: len(dev.commands) == 1)
            # In flight: refused, through the API and the CLI.
            r = http.delete("/v1/models/kws/1.0.0")
            assert r.status_code == 409
            assert r.json()["reason"] == "model-in-use"
            assert dev.device_id in r.json()["detail"]
            cli = runner.invoke(models_cli.app, ["delete", "kws@1.0.0", "--cloud", cloud.http_url])
            assert getattr(cli.exception, "reason", None) == "model-in-use"
            dev.send_ack(dev.commands[0], "refused", "incompatible")
            assert dev.wait(
                lambda: (
                    http.get(f"/v1/assignments/{a['id']}").json()["targets"][0]["state"]
                    == "refused"
                )
            )
            cli = runner.invoke(models_cli.app, ["delete", "kws@1.0.0", "--cloud", cloud.http_url])
            assert cli.exit_code == 0, cli.output
            assert "deleted kws@1.0.0" in cli.output
            assert http.get("/v1/models").json() == []
            assert http.get(f"/v1/blobs/{sha}").status_code == 404
            assert http.delete("/v1/models/kws/1.0.0").json()["reason"] == "not-found"

            # An online device is not forgotten: it would come back at its next message.
            r = http.delete(f"/v1/devices/{dev.device_id}")
            assert (r.status_code, r.json()["reason"]) == (409, "device-online")
            _offline(dev)
            assert dev.wait(lambda: not http.get(f"/v1/devices/{dev.device_id}").json()["online"])
            cli = runner.invoke(
                devices_cli.app, ["forget", dev.device_id, "--cloud", cloud.http_url]
            )
            assert cli.exit_code == 0, cli.output
            assert "telemetry is kept" in cli.output
            assert http.get(f"/v1/devices/{dev.device_id}").status_code == 404
            kept = http.get(f"/v1/telemetry/readings?device={dev.device_id}").json()
            assert len(kept) == 3
            # Seen again (a new birth), then forgotten with its history.
            dev.birth()
            assert dev.wait(lambda: http.get(f"/v1/devices/{dev.device_id}").status_code == 200)
            _offline(dev)
            assert dev.wait(lambda: not http.get(f"/v1/devices/{dev.device_id}").json()["online"])
            r = http.delete(f"/v1/devices/{dev.device_id}", params={"purge": "true"})
            assert r.status_code == 200, r.text
            assert r.json()["deleted"]["readings"] == 3
            assert http.get(f"/v1/telemetry/readings?device={dev.device_id}").json() == []
    finally:
        dev.close()


def _answer(devs: list[TestDevice], answers: list[tuple[str, str | None]]) -> threading.Thread:
    """Ack each device's first command in a thread, as agents would while the CLI waits."""

    def run() -> None:
        for dev, (status, reason) in zip(devs, answers, strict=True):
            if status == "silent":
                continue
            assert dev.wait(lambda dev=dev: len(dev.commands) >= 1)
            dev.send_ack(dev.commands[0], "received")
            time.sleep(0.3)
            dev.send_ack(dev.commands[0], status, reason)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_assign_wait_reports_each_final_state_and_exits_non_zero(
    cloud: Cloud, keys, tmp_path: Path, mosquitto
) -> None:
    fleet = cloud.config.fleet
    assert fleet is not None
    devs = [TestDevice(mosquitto.host, mosquitto.port, f"{fleet}-w{i}", fleet) for i in range(3)]
    runner = CliRunner(env=token_env(cloud))
    try:
        for d in devs:
            d.birth()
        archive = make_archive(tmp_path, keys[0])
        assert (
            runner.invoke(
                models_cli.app, ["push", str(archive), "--cloud", cloud.http_url]
            ).exit_code
            == 0
        )
        with api(cloud) as http:
            assert devs[0].wait(lambda: len(http.get("/v1/devices").json()) == 3)
        ids = [d.device_id for d in devs]
        base = ["assign", "kws@1.0.0", "--wait", "--cloud", cloud.http_url]
        # Everyone succeeds: exit 0, one line per state change (not a terminal here).
        t = _answer(devs, [("succeeded", None)] * 3)
        r = runner.invoke(models_cli.app, [*base, "--all", "--timeout", "30"])
        t.join(5)
        assert r.exit_code == 0, r.output
        for i in ids:
            assert f"{i}: received" in r.output
            assert f"{i}: succeeded" in r.output
        # One refuses: exit 5 (refused), the reason is shown.
        for d in devs:
            d.commands.clear()
        t = _answer(devs, [("succeeded", None), ("refused", "incompatible"), ("succeeded", None)])
        r = runner.invoke(models_cli.app, [*base, "--all", "--timeout", "30"])
        t.join(5)
        assert r.exit_code != 0
        assert getattr(r.exception, "exit_code", None) == 5, r.output
        assert f"{ids[1]}: refused (incompatible)" in r.output
        # One never answers: it times out, and a failure or timeout exits 1.
        for d in devs:
            d.commands.clear()
        t = _answer(devs, [("failed", "download-failed"), ("silent", None), ("succeeded", None)])
        started = time.monotonic()
        r = runner.invoke(models_cli.app, [*base, "--all", "--timeout", "4"])
        t.join(5)
        assert time.monotonic() - started < 15
        assert getattr(r.exception, "exit_code", None) == 1, r.output
        assert f"{ids[1]}: timeout" in r.output
        assert "failed: " + ids[0] in str(r.exception)
    finally:
        for d in devs:
            d.close()
