"""Model delivery through `cmd/assign-model`: refusals with distinct reasons, a swap, a crash."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.commit_acker import CommitAcker
from support.edge_agent import AgentThread, agent_toml, make_config
from support.edge_http import RangeServer
from support.tiny_models import make_bundle, pack

from edgefleet.cli import main
from edgefleet.edge.config import DeliveryConfig
from edgefleet.edge.delivery import Delivery
from edgefleet.edge.errors import GoldenMismatch
from edgefleet.edge.slots import Slots
from edgefleet.protocol import topics
from edgefleet.protocol.bundle import verify_bundle
from edgefleet.protocol.codec import encode
from edgefleet.protocol.errors import BundleError
from edgefleet.protocol.manifest import SIGNATURE_FILE
from edgefleet.protocol.messages import AssignModel, InferenceBatch


def _assign(
    acker: CommitAcker,
    device: str,
    cid: str,
    model: str,
    version: str,
    url: str,
    sha: str,
    size: int,
) -> None:
    cmd = AssignModel(
        device_id="cloud",
        boot_id="cloud",
        seq=1,
        sent_at=time.time(),
        command_id=cid,
        model=model,
        version=version,
        url=url,
        sha256=sha,
        size=size,
    )
    acker.client.publish(topics.command("default", device, "assign-model"), encode(cmd), qos=1)


def _final_ack(acker: CommitAcker, cid: str, timeout: float = 30):
    assert acker.wait_for(
        lambda a: any(x.command_id == cid and x.status != "received" for x in a.acks), timeout
    ), [(x.command_id, x.status, x.reason) for x in acker.acks]
    return next(x for x in acker.acks if x.command_id == cid and x.status != "received")


def _serving(acker: CommitAcker, device: str) -> str:
    batches = [
        m for _t, m in acker.messages if isinstance(m, InferenceBatch) and m.device_id == device
    ]
    return batches[-1].model_version


@pytest.mark.slow
def test_assign_model_refuses_bad_bundles_and_swaps_good_one(
    mosquitto, tmp_path, tiny_zoo, signing_key, trusted_pub, good_bundle
):
    www = tmp_path / "www"
    www.mkdir()
    server = RangeServer(www)
    acker = CommitAcker(mosquitto.host, mosquitto.port)
    dev = "deliv-1"
    runner = AgentThread(
        make_config(
            agent_toml(
                tmp_path / "d", mosquitto.port, device=dev, bundle=good_bundle, keys=[trusted_pub]
            )
        )
    )
    try:
        runner.wait_ready()
        assert acker.wait_for(lambda a: a.inference_records(dev) >= 3)

        def publish(name: str, bundle_dir: Path, version: str = "2.0.0") -> tuple[str, int]:
            sha, size = pack(verify_bundle_unchecked(bundle_dir), www / f"{name}.tar.gz")
            return sha, size

        cases = {}
        # tampered: model bytes changed after signing
        b = make_bundle(tiny_zoo, tmp_path / "tampered", signing_key, version="2.0.0")
        data = bytearray((b.path / "model.tflite").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (b.path / "model.tflite").write_bytes(bytes(data))
        cases["tampered"] = ("hash-mismatch", b.path)
        # unsigned
        b = make_bundle(tiny_zoo, tmp_path / "unsigned", signing_key, version="2.0.0")
        (b.path / SIGNATURE_FILE).unlink()
        cases["unsigned"] = ("unsigned", b.path)
        # signed by a key the device does not trust
        b = make_bundle(
            tiny_zoo, tmp_path / "wrongkey", Ed25519PrivateKey.generate(), version="2.0.0"
        )
        cases["wrongkey"] = ("untrusted-key", b.path)
        # windows of 16 samples: the model file still wants 32, and the specs say 16
        b = make_bundle(tiny_zoo, tmp_path / "shape", signing_key, version="2.0.0", window=16)
        cases["shape"] = ("incompatible", b.path)
        # a source channel this device does not have
        b = make_bundle(
            tiny_zoo, tmp_path / "chan", signing_key, version="2.0.0", channels=["ax", "ay", "gz"]
        )
        cases["channels"] = ("incompatible", b.path)
        b = make_bundle(
            tiny_zoo, tmp_path / "golden", signing_key, version="2.0.0", bad_golden=True
        )
        cases["golden"] = ("golden-mismatch", b.path)

        reasons = {}
        for i, (name, (want, path)) in enumerate(cases.items()):
            sha, size = publish(name, path)
            cid = f"c-{name}"
            _assign(acker, dev, cid, "tiny-vib", "2.0.0", server.url(f"{name}.tar.gz"), sha, size)
            ack = _final_ack(acker, cid)
            assert (ack.status, ack.reason) == ("refused", want), (name, ack)
            reasons[name] = ack.reason
            # the previous model keeps serving throughout
            n = acker.inference_records(dev)
            assert acker.wait_for(lambda a, n=n: a.inference_records(dev) > n + 2)
            assert _serving(acker, dev) == "1.0.0", i
        assert len({reasons[k] for k in ("tampered", "unsigned", "wrongkey", "shape")}) == 4

        # archive corrupted in transit: the command's sha256 does not match
        good2 = make_bundle(tiny_zoo, tmp_path / "good2", signing_key, version="2.0.0")
        sha, size = pack(good2, www / "good2.tar.gz")
        _assign(
            acker, dev, "c-corrupt", "tiny-vib", "2.0.0", server.url("good2.tar.gz"), "0" * 64, size
        )
        assert _final_ack(acker, "c-corrupt").reason == "archive-mismatch"

        # the good bundle, with the first download cut short: resumed with a Range request
        server.fail_after = size // 2
        _assign(acker, dev, "c-good", "tiny-vib", "2.0.0", server.url("good2.tar.gz"), sha, size)
        ack = _final_ack(acker, "c-good")
        assert ack.status == "succeeded", ack
        assert any(r and r.startswith("bytes=") for _p, r in server.requests)
        assert acker.wait_for(lambda a: _serving(a, dev) == "2.0.0")
        slots = runner.agent.slots
        assert (
            verify_bundle(slots.active_path(), [signing_key.public_key()]).manifest.version
            == "2.0.0"
        )
        assert slots.previous() is not None  # 1.0.0 kept for rollback
        # every archive was deleted once staged or refused: nothing left on the SD card
        downloads = tmp_path / "d" / "downloads"
        assert sorted(p.name for p in downloads.iterdir()) == []
        # a redelivered command runs once and is answered again
        _assign(acker, dev, "c-good", "tiny-vib", "2.0.0", server.url("good2.tar.gz"), sha, size)
        assert acker.wait_for(
            lambda a: sum(x.command_id == "c-good" and x.status == "succeeded" for x in a.acks) >= 2
        )
    finally:
        runner.stop()
        acker.close()
        server.close()


def verify_bundle_unchecked(path: Path):
    """A bundle directory as pack() wants it, without verifying (bad bundles are the point)."""
    from edgefleet.protocol.bundle import VerifiedBundle, read_manifest

    try:
        manifest = read_manifest(path)
    except Exception:
        manifest = None
    return VerifiedBundle(path, manifest, "")  # type: ignore[arg-type]


_CRASHER = r"""
import os, sys
from pathlib import Path
from edgefleet.cli import main
from edgefleet.edge.config import DeliveryConfig
from edgefleet.edge.delivery import Delivery
from edgefleet.edge.slots import Slots
from edgefleet.protocol.signing import load_public_key

root, bundle, pub, stage = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]

def hook(s):
    if s == stage:
        os._exit(9)  # a power cut at this step

d = Delivery(DeliveryConfig(), Slots(root, hook=hook), [load_public_key(pub)], ["ax", "ay", "az"],
             root / "dl")
staged = d.stage(bundle)
d.activate(staged)
"""


@pytest.mark.parametrize(
    ("stage", "expect"),
    [
        ("prepared", "1.0.0"),
        ("cleared", "1.0.0"),
        ("installed", "1.0.0"),
        ("synced", "1.0.0"),
        ("pointer-written", "1.0.0"),
        ("pointer-replaced", "2.0.0"),
        ("done", "2.0.0"),
    ],
)
def test_crash_during_swap_leaves_old_or_new(
    stage, expect, tmp_path, tiny_zoo, signing_key, trusted_pub, good_bundle
):
    root = tmp_path / "models"
    slots = Slots(root)
    shutil.copytree(good_bundle, slots.prepare(), dirs_exist_ok=True)
    slots.activate(slots.install(slots.staging()), "tiny-vib@1.0.0")
    v2 = make_bundle(tiny_zoo, tmp_path / "v2", signing_key, version="2.0.0")
    proc = subprocess.run(
        [sys.executable, "-c", _CRASHER, str(root), str(v2.path), str(trusted_pub), stage],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 9, proc.stderr
    active = Slots(root).active_path()
    assert active is not None
    # exactly one complete, verifiable model is active: the old one or the new one
    assert verify_bundle(active, [signing_key.public_key()]).manifest.version == expect


def _delivery(root: Path, trusted_pub: Path) -> Delivery:
    from edgefleet.protocol.signing import load_public_key

    return Delivery(
        DeliveryConfig(),
        Slots(root / "models"),
        [load_public_key(trusted_pub)],
        ["ax", "ay", "az"],
        root / "downloads",
    )


def _install(d: Delivery, bundle: Path) -> None:
    staged = d.stage(bundle)
    d.smoke_test(staged, "", 1).close()
    d.activate(staged)


def _version(path: Path | None, signing_key: Ed25519PrivateKey) -> str:
    assert path is not None
    return verify_bundle(path, [signing_key.public_key()]).manifest.version


def test_refused_bundle_keeps_the_rollback_copy(
    tmp_path, tiny_zoo, signing_key, trusted_pub, good_bundle
):
    d = _delivery(tmp_path, trusted_pub)
    _install(d, good_bundle)
    v2 = make_bundle(tiny_zoo, tmp_path / "v2", signing_key, version="2.0.0")
    _install(d, v2.path)
    slots = d.slots
    assert _version(slots.active_path(), signing_key) == "2.0.0"
    prev = slots.previous()
    assert prev is not None
    # v3 verifies but fails its golden vectors (refused after staging), v3b is tampered
    # (refused while staging): neither may cost v1 its slot.
    v3 = make_bundle(tiny_zoo, tmp_path / "v3", signing_key, version="3.0.0", bad_golden=True)
    staged = d.stage(v3.path)
    with pytest.raises(GoldenMismatch):
        d.smoke_test(staged, "", 1)
    d.discard(staged)
    v3b = make_bundle(tiny_zoo, tmp_path / "v3b", signing_key, version="3.0.0")
    (v3b.path / "golden.json").write_bytes(b"{}")
    with pytest.raises(BundleError):
        d.stage(v3b.path)
    assert slots.previous() == prev
    assert _version(slots.path(prev), signing_key) == "1.0.0"
    assert _version(slots.active_path(), signing_key) == "2.0.0"
    assert not slots.staging().exists()
    # and the rollback still works
    assert slots.rollback() == prev
    assert _version(slots.active_path(), signing_key) == "1.0.0"


def test_startup_rolls_back_when_the_active_model_no_longer_verifies(
    tmp_path, tiny_zoo, signing_key, trusted_pub, good_bundle, capsys
):
    data = tmp_path / "d"
    d = _delivery(data, trusted_pub)
    _install(d, good_bundle)
    v2 = make_bundle(tiny_zoo, tmp_path / "v2", signing_key, version="2.0.0")
    _install(d, v2.path)
    # The SD card corrupted the active model while the device was off.
    model = d.slots.active_path() / "model.tflite"  # type: ignore[operator]
    data_bytes = bytearray(model.read_bytes())
    data_bytes[len(data_bytes) // 2] ^= 0xFF
    model.write_bytes(bytes(data_bytes))
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    # No model.bundle in the config: only the slots can provide a model.
    toml = tmp_path / "agent.toml"
    toml.write_text(agent_toml(data, port, device="rb-1", keys=[trusted_pub]))
    runner = AgentThread(make_config(toml.read_text()))
    try:
        runner.wait_ready(online=False)
        assert runner.agent.model_ref == ("tiny-vib", "1.0.0")
        assert _version(runner.agent.slots.active_path(), signing_key) == "1.0.0"
        # the previous model serves: windows are being inferred with it
        deadline = time.monotonic() + 20
        while runner.agent.latency.total < 3:
            assert time.monotonic() < deadline, "the rolled-back model does not serve"
            time.sleep(0.05)
    finally:
        runner.stop()
    # `agent status` after the run: what is stored (never sent: no broker), the slots.
    boot = runner.agent.sequencer.boot_id
    last = runner.agent.sequencer.last
    assert last >= 3
    capsys.readouterr()
    assert main(["agent", "status", "--config", str(toml)]) == 0
    out = capsys.readouterr().out
    assert f"depth: {last} records" in out
    assert "drops: 0" in out
    assert f"boot {boot}: last seq {last}" in out
    active = runner.agent.slots.active()
    assert f"model slot {active} (active): tiny-vib@1.0.0" in out
    assert "(previous): tiny-vib@2.0.0" in out


def test_downloads_are_swept(tmp_path, http_root, good_bundle, trusted_pub):
    www, server = http_root
    d = _delivery(tmp_path, trusted_pub)
    d.downloads.mkdir(parents=True)
    stale = [d.downloads / f"{'a' * 64}.tar.gz", d.downloads / f"{'b' * 64}.tar.gz.part"]
    for p in stale:
        p.write_bytes(b"x" * 100)
    sha, size = pack(verify_bundle_unchecked(good_bundle), www / "v1.tar.gz")
    cmd = AssignModel(
        device_id="cloud",
        boot_id="cloud",
        seq=1,
        sent_at=time.time(),
        command_id="c1",
        model="tiny-vib",
        version="1.0.0",
        url=server.url("v1.tar.gz"),
        sha256=sha,
        size=size,
    )
    archive = d.fetch(cmd)
    # Another command's partial download and an old archive went when this one was fetched.
    assert [p.name for p in d.downloads.iterdir()] == [archive.name]
    d.stage(archive)
    d.forget(archive)
    assert list(d.downloads.iterdir()) == []
    (d.downloads / f"{sha}.tar.gz.part").write_bytes(b"x")
    assert d.sweep() == 1
    assert list(d.downloads.iterdir()) == []
