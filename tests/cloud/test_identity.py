"""Device identity on a real cloud: claim tokens, provisioning, revocation and renewal."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from support.cloud_ingest import unique_fleet

from edgefleet.cloud.app import Cloud, CloudConfig
from edgefleet.cloud.broker import MosquittoBroker
from edgefleet.cloud.broker.production import write_production_config
from edgefleet.cloud.identity.errors import ClaimRefused
from edgefleet.cloud.identity.service import RENEW_CONTEXT, IdentitySettings, Provisioner
from edgefleet.cloud.store import open_store
from edgefleet.cloud.store.base import TelemetryStore
from edgefleet.edge import provision as edge_provision
from edgefleet.edge.config import load_config
from edgefleet.edge.provision import ProvisionRefused, provision, renew_if_due, renewal_loop


def _cloud(tmp_path: Path, broker: MosquittoBroker, **identity: object) -> Cloud:
    fleet = unique_fleet()
    work = tmp_path / "cloud"
    return Cloud(
        CloudConfig(
            workdir=work,
            broker_url=broker.url,
            http_port=0,
            node_id=f"cloud-{fleet}",
            dashboard=None,
            identity=IdentitySettings(directory=work / "identity", **identity),  # type: ignore[arg-type]
        )
    )


@pytest.fixture
def cloud(tmp_path: Path, mosquitto: MosquittoBroker) -> Iterator[Cloud]:
    with _cloud(tmp_path, mosquitto) as c:
        yield c


def _admin(cloud: Cloud) -> dict[str, str]:
    assert cloud.admin_token
    return {"Authorization": f"Bearer {cloud.admin_token}"}


def _claim(cloud: Cloud, fleet: str = "plant", **body: object) -> str:
    r = httpx.post(
        f"{cloud.http_url}/v1/claim-tokens", json={"fleet": fleet, **body}, headers=_admin(cloud)
    )
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


def _csr(device: str = "x") -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, device)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _provision(
    cloud: Cloud, token: str, device: str | None = None, **extra: object
) -> httpx.Response:
    return httpx.post(
        f"{cloud.http_url}/v1/provision",
        json={"token": token, "csr": _csr(), "device_id": device, **extra},
    )


def test_claim_tokens_need_an_admin_and_are_stored_hashed(cloud: Cloud) -> None:
    url = f"{cloud.http_url}/v1/claim-tokens"
    assert httpx.post(url, json={"fleet": "plant"}).status_code == 401
    r = httpx.post(
        f"{cloud.http_url}/v1/tokens", json={"name": "op", "role": "operator"},
        headers=_admin(cloud),
    )  # fmt: skip
    operator = {"Authorization": f"Bearer {r.json()['token']}"}
    assert httpx.post(url, json={"fleet": "plant"}, headers=operator).status_code == 403
    token = _claim(cloud)
    assert cloud.store is not None
    db = Path(cloud.db_url.removeprefix("sqlite:///")).read_bytes()
    assert token.encode() not in db  # only its SHA-256 is kept


def test_a_single_use_token_provisions_one_device(cloud: Cloud) -> None:
    token = _claim(cloud, tags=["lab", "line-2"])
    first = _provision(cloud, token, "pi-1")
    assert first.status_code == 201, first.text
    body = first.json()
    cert = x509.load_pem_x509_certificate(body["certificate"].encode())
    ca = x509.load_pem_x509_certificate(body["ca"].encode())
    cert.verify_directly_issued_by(ca)
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "pi-1"
    assert (body["fleet"], body["tags"]) == ("plant", ["lab", "line-2"])
    assert body["device_token"]
    assert body["node_public_key"].startswith("ecdsa-sha2-nistp256 ")
    # The device is known (offline) with the claim's fleet and tags before it ever connects.
    assert cloud.store is not None
    dev = cloud.store.device("pi-1")
    assert (dev.fleet, sorted(dev.tags), dev.online) == ("plant", ["lab", "line-2"], False)
    second = _provision(cloud, token, "pi-2")
    assert second.status_code == 403
    assert second.json()["reason"] == "claim-refused"


def test_an_n_use_token_provisions_n_devices_then_is_refused(cloud: Cloud) -> None:
    token = _claim(cloud, uses=3)
    ids = [_provision(cloud, token).json()["device_id"] for _ in range(3)]
    assert len(set(ids)) == 3
    assert all(i.startswith("plant-") for i in ids)
    assert _provision(cloud, token).status_code == 403


def test_expired_wrong_fleet_and_unknown_tokens_are_refused(cloud: Cloud) -> None:
    expiring = _claim(cloud, ttl_s=0.5)
    time.sleep(0.8)
    assert _provision(cloud, expiring, "pi-late").status_code == 403
    token = _claim(cloud, fleet="plant")
    wrong = _provision(cloud, token, "pi-w", fleet="other")
    assert wrong.status_code == 403
    assert "another fleet" in wrong.json()["detail"]
    # A refused claim spends nothing: the same token still works for its own fleet.
    assert _provision(cloud, token, "pi-w", fleet="plant").status_code == 201
    assert _provision(cloud, "efc_" + "A" * 43, "pi-x").status_code == 403
    bad = httpx.post(
        f"{cloud.http_url}/v1/provision", json={"token": _claim(cloud), "csr": "not a csr"}
    )
    assert bad.status_code == 422


def test_an_id_already_held_cannot_be_claimed_again(cloud: Cloud) -> None:
    assert _provision(cloud, _claim(cloud), "pi-1").status_code == 201
    again = _provision(cloud, _claim(cloud), "pi-1")
    assert again.status_code == 409
    assert "revoke it first" in again.json()["detail"]


def test_revoke_cuts_api_access_at_once_and_lists_the_serial_in_the_crl(
    cloud: Cloud, tmp_path: Path
) -> None:
    done = provision(cloud.http_url, _claim(cloud), tmp_path / "etc", device_id="pi-r")
    token = (tmp_path / "etc" / "device.token").read_text().strip()
    device = {"Authorization": f"Bearer {token}"}
    blob = f"{cloud.http_url}/v1/blobs/{'0' * 64}"
    # A live device credential is known (403: not assigned that bundle), not unauthenticated.
    assert httpx.get(blob, headers=device).status_code == 403
    r = httpx.post(f"{cloud.http_url}/v1/identities/pi-r/revoke", headers=_admin(cloud))
    assert r.status_code == 200, r.text
    assert r.json()["certificates"] == [done.serial]
    assert r.json()["tokens"] == 1
    assert httpx.get(blob, headers=device).status_code == 401
    crl_pem = httpx.get(f"{cloud.http_url}/v1/identity/crl.pem", headers=_admin(cloud)).content
    crl = x509.load_pem_x509_crl(crl_pem)
    assert crl.get_revoked_certificate_by_serial_number(int(done.serial, 16)) is not None
    listed = httpx.get(f"{cloud.http_url}/v1/identities", headers=_admin(cloud)).json()
    assert [(i["device_id"], i["state"]) for i in listed] == [("pi-r", "revoked")]
    # The revoked certificate, though properly signed for, cannot renew itself.
    with pytest.raises(ProvisionRefused, match="revoked"):
        edge_provision.renew(load_config(done.config))


def test_provision_writes_a_config_the_agent_loads_with_secrets_0600(
    cloud: Cloud, tmp_path: Path
) -> None:
    out = tmp_path / "etc"
    done = provision(cloud.http_url, _claim(cloud), out, device_id="pi-9")
    cfg = load_config(done.config)
    assert (cfg.device.id, cfg.device.fleet) == ("pi-9", "plant")
    assert cfg.identity.cloud == cloud.http_url
    assert cfg.fl.auth_private_key
    assert cfg.fl.auth_public_key
    for name in ("device.key", "node.key", "device.token", "agent.toml"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600, name
    # One key for TLS and Flower: the OpenSSH node key is the certificate's key.
    cert = x509.load_pem_x509_certificate((out / "device.crt").read_bytes())
    node = serialization.load_ssh_private_key((out / "node.key").read_bytes(), None)
    assert node.public_key() == cert.public_key()
    with pytest.raises(ProvisionRefused):
        provision(cloud.http_url, "efc_" + "B" * 43, tmp_path / "other")
    assert not (tmp_path / "other" / "agent.toml").exists()


@pytest.mark.slow(seconds=12)
def test_the_agent_renews_a_short_lived_certificate_before_it_expires(
    tmp_path: Path, mosquitto: MosquittoBroker
) -> None:
    with _cloud(tmp_path, mosquitto, cert_lifetime_s=8.0) as cloud:
        # An absolute state directory, as /var/lib/edgefleet beside /etc/edgefleet: what renewal
        # rewrites lives there, and the config directory (read-only to the installed service,
        # ProtectSystem=strict) is never written to.
        state = tmp_path / "state"
        done = provision(
            cloud.http_url, _claim(cloud), tmp_path / "etc", device_id="pi-s", data_dir=str(state)
        )
        cfg = load_config(done.config)
        assert Path(str(cfg.identity.cert_file)).parent == state / "identity"
        assert Path(str(cfg.fl.auth_private_key)).parent == state / "identity"
        etc_before = {p.name: p.read_bytes() for p in (tmp_path / "etc").iterdir() if p.is_file()}
        assert renew_if_due(cfg) is None  # most of its validity is ahead
        first = edge_provision.validity(Path(str(cfg.identity.cert_file)))
        old_key = Path(str(cfg.identity.key_file)).read_bytes()
        renewed: list[edge_provision.Validity] = []
        fast = msgspec.structs.replace(cfg.identity, renew_below=0.5, check_every_s=0.2)
        cfg = msgspec.structs.replace(cfg, identity=fast)

        async def run() -> None:
            stop = asyncio.Event()
            done = asyncio.Event()

            def on_renewed(v: edge_provision.Validity) -> None:
                renewed.append(v)
                done.set()

            task = asyncio.create_task(renewal_loop(cfg, stop, on_renewed=on_renewed))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 10)
            stop.set()
            await task

        asyncio.run(run())
        assert renewed, "the renewal loop did not renew within 10 s"
        new = renewed[0]
        assert time.time() < first.not_after  # renewed before the old one expired
        assert new.serial != first.serial
        assert new.not_after > first.not_after
        assert Path(str(cfg.identity.key_file)).read_bytes() != old_key
        cert = x509.load_pem_x509_certificate(Path(str(cfg.identity.cert_file)).read_bytes())
        key = serialization.load_pem_private_key(
            Path(str(cfg.identity.key_file)).read_bytes(), None
        )
        assert cert.public_key() == key.public_key()
        node = serialization.load_ssh_private_key(
            Path(str(cfg.fl.auth_private_key)).read_bytes(), None
        )
        assert node.public_key() == cert.public_key()
        etc_after = {p.name: p.read_bytes() for p in (tmp_path / "etc").iterdir() if p.is_file()}
        assert etc_after == etc_before
        states = httpx.get(f"{cloud.http_url}/v1/identities", headers=_admin(cloud)).json()
        assert sorted(s["state"] for s in states) == ["active", "superseded"]


def test_renewal_needs_the_current_key_and_a_retry_gets_the_same_certificate(
    cloud: Cloud,
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "pi-k")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    body = httpx.post(
        f"{cloud.http_url}/v1/provision",
        json={"token": _claim(cloud), "csr": csr.public_bytes(serialization.Encoding.PEM).decode(),
              "device_id": "pi-k"},
    ).json()  # fmt: skip
    new_csr = _csr("pi-k")
    url = f"{cloud.http_url}/v1/provision/renew"
    stranger = ec.generate_private_key(ec.SECP256R1())
    forged = stranger.sign(RENEW_CONTEXT + new_csr.encode(), ec.ECDSA(hashes.SHA256()))
    refused = httpx.post(
        url,
        json={"certificate": body["certificate"], "csr": new_csr,
              "signature": base64.b64encode(forged).decode()},
    )  # fmt: skip
    assert refused.status_code == 403
    sig = key.sign(RENEW_CONTEXT + new_csr.encode(), ec.ECDSA(hashes.SHA256()))
    req = {"certificate": body["certificate"], "csr": new_csr,
           "signature": base64.b64encode(sig).decode()}  # fmt: skip
    first = httpx.post(url, json=req)
    assert first.status_code == 200, first.text
    assert first.json()["serial"] != body["serial"]
    # The answer was lost: the retry with the old certificate gets the same new one.
    retry = httpx.post(url, json=req)
    assert retry.status_code == 200
    assert retry.json()["serial"] == first.json()["serial"]
    other = _csr("pi-k")
    sig2 = key.sign(RENEW_CONTEXT + other.encode(), ec.ECDSA(hashes.SHA256()))
    replaced = httpx.post(
        url,
        json={"certificate": body["certificate"], "csr": other,
              "signature": base64.b64encode(sig2).decode()},
    )  # fmt: skip
    assert replaced.status_code == 403
    assert "replaced" in replaced.json()["detail"]


def test_a_provisioning_the_broker_refuses_is_undone_and_the_token_kept(
    cloud: Cloud, tmp_path: Path
) -> None:
    assert cloud.identity is not None
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "s.pem").write_bytes(cloud.identity.ca.issue_server_cert(["127.0.0.1"], key))
    (tmp_path / "s.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    # A broker configuration whose Mosquitto is not running: enrolling cannot reload it.
    broker = write_production_config(
        tmp_path / "broker", ca=cloud.identity.ca.cert_path, cert=tmp_path / "s.pem",
        key=tmp_path / "s.key", crl=cloud.identity.current_crl(), backend="files",
    )  # fmt: skip
    cloud.identity.broker = broker.authority(crl=cloud.identity.current_crl)
    token = _claim(cloud)
    failed = _provision(cloud, token, "pi-u")
    assert failed.status_code == 422
    assert "undone" in failed.json()["detail"]
    listed = httpx.get(f"{cloud.http_url}/v1/identities", headers=_admin(cloud)).json()
    assert listed == []
    cloud.identity.broker = None
    assert _provision(cloud, token, "pi-u").status_code == 201


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TelemetryStore]:
    url = (
        f"sqlite:///{tmp_path / 'store.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("pg_url")
    )
    s = open_store(url)
    yield s
    s.close()


def test_claims_identities_and_revocation_on_both_stores(
    any_store: TelemetryStore, tmp_path: Path
) -> None:
    p = Provisioner(IdentitySettings(directory=tmp_path / "id"), any_store, lambda: "mqtt://x:1")
    token, _ = p.book.create_claim("plant", ["a"], uses=2)
    first = p.provision(token, _csr(), "d1")
    p.provision(token, _csr(), "d2")
    with pytest.raises(ClaimRefused):
        p.provision(token, _csr(), "d3")
    assert sorted(any_store.device("d1").tags) == ["a"]
    assert [i.state for i in p.book.of_device("d1")] == ["active"]
    assert p.revoke("d1")["certificates"] == [first["serial"]]
    assert p.book.revoked_serials() == [int(first["serial"], 16)]
    assert any_store.device("d1").online is False
