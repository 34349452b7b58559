"""TLS and SuperNode authentication with certificates ``edgefleet fl certs`` generates.

The unit tests check the files (chain, SANs, key formats Flower reads, permissions, refusals);
the slow one runs a real TLS SuperLink with ``--enable-supernode-auth``: a registered SuperNode
trains in a 1-round run, an unregistered key, a wrong CA and no CA are all refused.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from support.fl_fleet import Fleet, fill_agent_db, vibration_windows
from typer.testing import CliRunner

from edgefleet.cli import main
from edgefleet.cloud.fl.apps.outcome import run_on_superlink
from edgefleet.cloud.fl.apps.prepare import prepare_run
from edgefleet.cloud.fl.errors import FlRunError
from edgefleet.cloud.fl.settings import RunSettings
from edgefleet.cloud.fl.superlink.certs import (
    BadSubjectName,
    CertsError,
    CertsExist,
    NodeKeyError,
    init_certs,
    load_node_public_key,
    node_key,
    node_public_key_bytes,
)
from edgefleet.cloud.fl.superlink.certs_cli import app as certs_app
from edgefleet.cloud.fl.superlink.process import SuperLink, flower_env
from edgefleet.edge.fl.config import FlConfig, supernode_command

MODEL = "vibration-anomaly"


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _verify(ca: Path, cert: Path, subject: x509.verification.Subject) -> None:
    store = Store([_cert(ca)])
    verifier = PolicyBuilder().store(store).build_server_verifier(subject)
    verifier.verify(_cert(cert), [])


def test_superlink_certificate_chains_to_the_ca_with_the_sans(tmp_path):
    files = init_certs(
        tmp_path, hosts=["fl.example.org", "FL.example.org."], ips=["10.0.0.5", "::1"]
    )
    cert = _cert(files.cert)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost", "fl.example.org"]
    assert sans.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address(a) for a in ("127.0.0.1", "10.0.0.5", "::1")
    ]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert _cert(files.ca).extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # The RFC 5280 path validation TLS clients do, for each name a SuperNode may dial.
    for name in ("localhost", "fl.example.org"):
        _verify(files.ca, files.cert, x509.DNSName(name))
    for addr in ("127.0.0.1", "10.0.0.5", "::1"):
        _verify(files.ca, files.cert, x509.IPAddress(ipaddress.ip_address(addr)))
    with pytest.raises(VerificationError):
        _verify(files.ca, files.cert, x509.DNSName("other.example.org"))
    with pytest.raises(VerificationError):  # another CA does not vouch for it
        _verify(init_certs(tmp_path / "other").ca, files.cert, x509.DNSName("localhost"))
    assert files.tls_files().ca == files.ca


def test_private_keys_are_0600_and_existing_files_are_not_overwritten(tmp_path):
    files = init_certs(tmp_path)
    assert (_mode(files.ca_key), _mode(files.key)) == (0o600, 0o600)
    assert (_mode(files.ca), _mode(files.cert)) == (0o644, 0o644)
    before = files.ca.read_bytes()
    with pytest.raises(CertsExist, match="--overwrite"):
        init_certs(tmp_path)
    assert files.ca.read_bytes() == before
    files.key.chmod(0o644)
    again = init_certs(tmp_path, overwrite=True)
    assert again.ca.read_bytes() != before
    assert _mode(again.key) == 0o600

    pair = node_key(tmp_path / "keys", "pi-1")
    assert (_mode(pair.private_key), _mode(pair.public_key)) == (0o600, 0o644)
    with pytest.raises(CertsExist):
        node_key(tmp_path / "keys", "pi-1")
    node_key(tmp_path / "keys", "pi-1", overwrite=True)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"hosts": ["bad host"]}, BadSubjectName, "not a DNS host name"),
        ({"hosts": ["-x.example.org"]}, BadSubjectName, "not a DNS host name"),
        ({"hosts": ["10.0.0.1"]}, BadSubjectName, "pass it with --ip"),
        ({"ips": ["fl.example.org"]}, BadSubjectName, "not an IPv4 or IPv6"),
        ({"days": 0}, CertsError, "at least 1 day"),
    ],
)
def test_bad_names_are_refused_before_anything_is_written(tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        init_certs(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_node_keys_are_in_the_format_flower_reads(tmp_path):
    from flwr.supercore.primitives.asymmetric import bytes_to_public_key, uses_nist_ec_curve

    pair = node_key(tmp_path, "pi-1")
    # flower-supernode --auth-supernode-private-key: an OpenSSH EC private key.
    private = serialization.load_ssh_private_key(pair.private_key.read_bytes(), None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert isinstance(private.curve, ec.SECP384R1)
    # flwr supernode register: an OpenSSH public key; it sends PEM SubjectPublicKeyInfo.
    assert pair.public_key.read_text().startswith("ecdsa-sha2-nistp384 ")
    assert pair.public_key.read_text().rstrip().endswith(" pi-1")
    assert load_node_public_key(pair.public_key) == private.public_key()
    sent = bytes_to_public_key(node_public_key_bytes(pair.public_key))
    assert uses_nist_ec_curve(sent)
    assert sent == private.public_key()


def test_unusable_node_names_and_key_files_are_refused(tmp_path):
    for name in ("", "../x", "a/b", ".hidden", "x" * 65):
        with pytest.raises(NodeKeyError, match="cannot name"):
            node_key(tmp_path, name)
    with pytest.raises(NodeKeyError, match="cannot read"):
        load_node_public_key(tmp_path / "missing.pub")
    pem = tmp_path / "pem.pub"
    pem.write_bytes(
        ec.generate_private_key(ec.SECP384R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(NodeKeyError, match="not an OpenSSH public key"):
        load_node_public_key(pem)
    ed = tmp_path / "ed.pub"
    ed.write_bytes(
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    with pytest.raises(NodeKeyError, match="NIST curve"):
        load_node_public_key(ed)


def test_cli_writes_the_files_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "certs"
    args = ["fl", "certs", "init", "--out", str(out), "--host", "fl.example.org"]
    assert main([*args, "--ip", "10.0.0.5"]) == 0
    sans = _cert(out / "superlink.crt").extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert "fl.example.org" in sans.value.get_values_for_type(x509.DNSName)
    assert main(args) == CertsExist.exit_code
    assert "already exist" in capsys.readouterr().err
    assert main(["fl", "certs", "node-key", "--out", str(out), "--name", "pi-1"]) == 0
    assert (out / "pi-1.key").is_file()
    assert (out / "pi-1.pub").is_file()
    result = CliRunner().invoke(certs_app, ["node-key", "--out", str(out), "--name", "a b"])
    assert isinstance(result.exception, NodeKeyError)


def _refused(cmds: dict[str, list[str]], tmp_path: Path) -> dict[str, tuple[int, str]]:
    """Run SuperNodes that must give up, side by side; each one's exit status and log."""
    procs: dict[str, subprocess.Popen[bytes]] = {}
    for name, cmd in cmds.items():
        with (tmp_path / f"{name}.log").open("wb") as out:
            procs[name] = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT,
                env=flower_env(tmp_path / f"home-{name}"), start_new_session=True,
            )  # fmt: skip
    deadline = time.monotonic() + 90  # only against a hang
    try:
        for name, proc in procs.items():
            try:
                proc.wait(max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"SuperNode {name} was not refused in 90 s; see {tmp_path}")
    finally:
        for proc in procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # its SuperExec child too
            proc.wait(5)
    return {
        name: (int(proc.returncode), (tmp_path / f"{name}.log").read_text(errors="replace"))
        for name, proc in procs.items()
    }


@pytest.mark.slow(seconds=45)
def test_registered_supernode_trains_over_tls_and_others_are_refused(tmp_path, capsys):
    certs = init_certs(tmp_path / "certs")
    other_ca = init_certs(tmp_path / "other-ca").ca
    good = node_key(tmp_path / "keys", "good")
    stranger = node_key(tmp_path / "keys", "stranger")
    settings = RunSettings(
        model=MODEL,
        rounds=1,
        min_clients=1,
        workdir=str(tmp_path / "run"),
        round_timeout_s=90,
        quorum_timeout_s=90,
    )
    prepare_run(settings)
    db = fill_agent_db(tmp_path / "agent.db", MODEL, vibration_windows(100, 64))
    link = SuperLink(tmp_path / "link", tls=certs.tls_files(), supernode_auth=True)
    fleet = Fleet(link.start())
    try:
        node_id = link.register_node(good.public_key, name="good")
        assert link.nodes() == {node_id: "registered"}
        with pytest.raises(FlRunError, match="could not register"):
            link.register_node(good.public_key)
        # The CLI registers with a SuperLink it did not start (Flower's own CLI cannot run).
        spare = node_key(tmp_path / "keys", "spare").public_key
        register = ["fl", "certs", "register", str(spare), "--superlink", link.address]
        assert main([*register, "--ca", str(other_ca)]) == FlRunError.exit_code
        assert "CERTIFICATE_VERIFY_FAILED" in capsys.readouterr().err  # it checks the SuperLink
        assert main([*register, "--ca", str(certs.ca), "--name", "spare"]) == 0
        registered = link.nodes()
        spare_id = next(n for n in registered if n != node_id)
        assert registered == {node_id: "registered", spare_id: "registered"}

        def node(key: Path, ca: Path) -> FlConfig:
            return FlConfig(
                enabled=True,
                superlink=link.address,
                insecure=False,
                root_certificates=str(ca),
                auth_private_key=str(key),
                auth_public_key=str(key.with_suffix(".pub")),
            )

        no_ca = supernode_command(node(good.private_key, certs.ca), db)
        i = no_ca.index("--root-certificates")
        del no_ca[i : i + 2]  # no CA at all: the system trust store does not know ours
        refused = _refused(
            {
                # An unregistered key over good TLS: the SuperLink refuses to activate it.
                "stranger": supernode_command(node(stranger.private_key, certs.ca), db),
                # The registered key, but a CA that did not sign the SuperLink's certificate.
                "wrong-ca": supernode_command(node(good.private_key, other_ca), db),
                "no-ca": no_ca,
                # No key: Flower 1.41 lets such a SuperNode register itself unless the
                # SuperLink runs with --enable-supernode-auth (a keyed one must be registered).
                "keyless": supernode_command(
                    FlConfig(
                        enabled=True,
                        superlink=link.address,
                        insecure=False,
                        root_certificates=str(certs.ca),
                    ),
                    db,
                ),
            },
            tmp_path,
        )
        assert all(rc != 0 for rc, _ in refused.values())
        assert "Failed to activate SuperNode" in refused["stranger"][1]
        assert "No SuperNode found with the given public key" in link.log_path.read_text()
        assert "CERTIFICATE_VERIFY_FAILED" in refused["wrong-ca"][1]
        assert "CERTIFICATE_VERIFY_FAILED" in refused["no-ca"][1]
        assert "SuperNode authentication is enabled" in refused["keyless"][1]
        assert link.nodes() == registered  # none of them got in

        fleet.add_node(
            db,
            "good",
            insecure=False,
            root_certificates=str(certs.ca),
            auth_private_key=str(good.private_key),
            auth_public_key=str(good.public_key),
        )
        deadline = time.monotonic() + 60
        while link.nodes()[node_id] != "online":
            assert time.monotonic() < deadline, f"the SuperNode never came online; {link.nodes()}"
            time.sleep(0.5)
        outcome = run_on_superlink(settings, link, timeout=180)
    finally:
        fleet.stop()
    assert [r["status"] for r in outcome.rounds] == ["aggregated"]
    assert outcome.rounds[0]["replies"] == 1
    assert outcome.participants == 1
