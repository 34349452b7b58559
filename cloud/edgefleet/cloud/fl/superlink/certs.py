"""Certificates for a TLS SuperLink and key pairs for SuperNode authentication.

Everything is made with ``cryptography`` (no ``openssl`` needed): a self-signed CA, a SuperLink
server certificate it signs (SANs: ``localhost``, ``127.0.0.1`` and the names given), and
SuperNode key pairs in the format Flower 1.41 reads: an EC key on a NIST curve (P-384, as
Flower's own tooling makes), the private key in OpenSSH format for
``flower-supernode --auth-supernode-private-key``, the public key in OpenSSH format for
``flwr supernode register`` (or
:meth:`~edgefleet.cloud.fl.superlink.process.SuperLink.register_node`).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgefleet.protocol.errors import ConfigError

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
SERVER_CERT = "superlink.crt"
SERVER_KEY = "superlink.key"
# Flower's SuperNode key pairs are P-384 (flwr.supercore.primitives.asymmetric); any NIST
# curve is accepted, P-384 keeps us on the path Flower itself exercises.
NODE_CURVE = ec.SECP384R1
_NIST_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class CertsError(ConfigError):
    """Certificates or SuperNode keys cannot be made or read; the message says what to fix."""

    reason = "bad-certs"


class CertsExist(CertsError):
    """A file to write already exists and overwriting was not asked for."""

    reason = "certs-exist"


class BadSubjectName(CertsError):
    """A host name or IP address for the SuperLink certificate is not valid."""

    reason = "bad-subject-name"


class NodeKeyError(CertsError):
    """A SuperNode key name or key file is not usable for Flower's SuperNode authentication."""

    reason = "bad-node-key"


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Certificates of a TLS SuperLink (``edgefleet fl certs`` makes a self-signed set)."""

    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class SuperLinkCerts:
    """The files ``init_certs`` writes: the CA (and its key) and the SuperLink's pair."""

    ca: Path
    ca_key: Path
    cert: Path
    key: Path

    def tls_files(self) -> TlsFiles:
        """What :class:`~edgefleet.cloud.fl.superlink.process.SuperLink` takes as ``tls``."""
        return TlsFiles(ca=self.ca, cert=self.cert, key=self.key)


@dataclass(frozen=True, slots=True)
class NodeKeyPair:
    """A SuperNode's OpenSSH key files: the private one stays on the device."""

    private_key: Path
    public_key: Path


def _check_dns(names: Iterable[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        host = name.strip().rstrip(".").lower()
        if not host or len(host) > 253 or not all(_DNS_LABEL.fullmatch(p) for p in host.split(".")):
            raise BadSubjectName(
                f"{name!r} is not a DNS host name (letters, digits and '-' in dot-separated "
                "labels); pass IP addresses with --ip"
            )
        try:
            ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            raise BadSubjectName(f"{name!r} is an IP address; pass it with --ip")
        if host not in out:
            out.append(host)
    return out


def _check_ips(addrs: Iterable[str]) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    out: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for addr in addrs:
        try:
            ip = ipaddress.ip_address(addr.strip())
        except ValueError:
            raise BadSubjectName(f"{addr!r} is not an IPv4 or IPv6 address") from None
        if ip not in out:
            out.append(ip)
    return out


def _refuse_existing(paths: Sequence[Path], overwrite: bool) -> None:
    existing = [str(p) for p in paths if p.exists() or p.is_symlink()]
    if existing and not overwrite:
        raise CertsExist(
            f"{', '.join(existing)} already exist(s); pass overwrite (--overwrite) to replace "
            "them (SuperNodes that trust the old CA then need the new ca.crt)"
        )


def _write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    # O_CREAT's mode does not apply to an existing file being overwritten.
    os.fchmod(fd, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgefleet"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not ca,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def init_certs(
    out: Path,
    *,
    hosts: Sequence[str] = (),
    ips: Sequence[str] = (),
    days: int = 365,
    ca_days: int = 3650,
    overwrite: bool = False,
) -> SuperLinkCerts:
    """Write a new CA and a SuperLink certificate it signs into ``out`` (keys mode 0600)."""
    if days < 1 or ca_days < days:
        raise CertsError(f"validity must be at least 1 day and within the CA's: {days=} {ca_days=}")
    dns = _check_dns(["localhost", *hosts])
    addrs = _check_ips(["127.0.0.1", *ips])
    out = Path(out)
    files = SuperLinkCerts(out / CA_CERT, out / CA_KEY, out / SERVER_CERT, out / SERVER_KEY)
    _refuse_existing([files.ca, files.ca_key, files.cert, files.key], overwrite)

    now = dt.datetime.now(dt.UTC)
    # Clocks of small devices drift; a certificate valid from "now" fails on one a bit behind.
    start = now - dt.timedelta(hours=1)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("edgefleet FL CA")
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(now + dt.timedelta(days=ca_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(h) for h in dns]
    sans += [x509.IPAddress(ip) for ip in addrs]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(dns[1] if len(dns) > 1 else "edgefleet SuperLink"))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    _write(files.ca_key, _pem_key(ca_key), 0o600)
    _write(files.key, _pem_key(key), 0o600)
    _write(files.ca, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(files.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return files


def load_certs(directory: Path) -> SuperLinkCerts:
    """The SuperLink's files in ``directory`` (as ``init_certs`` wrote them), checked to exist."""
    d = Path(directory)
    files = SuperLinkCerts(d / CA_CERT, d / CA_KEY, d / SERVER_CERT, d / SERVER_KEY)
    missing = [p.name for p in (files.ca, files.cert, files.key) if not p.is_file()]
    if missing:
        raise CertsError(
            f"{d} lacks {', '.join(missing)}: make them with `edgefleet fl certs init --out {d}`"
        )
    try:
        cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
        ca = x509.load_pem_x509_certificate(files.ca.read_bytes())
    except ValueError as exc:
        raise CertsError(f"{d} holds a certificate that is not PEM X.509: {exc}") from None
    try:
        cert.verify_directly_issued_by(ca)  # the signature, not only the name: CAs share it
    except (ValueError, TypeError, InvalidSignature):
        raise CertsError(f"{files.cert} was not issued by {files.ca}: make a new set") from None
    return files


def check_node_name(name: str) -> str:
    """``name`` if it can name a SuperNode's key files, else :class:`NodeKeyError`."""
    if not _NODE_NAME.fullmatch(name):
        raise NodeKeyError(
            f"{name!r} cannot name a SuperNode key: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def node_key(out: Path, name: str, *, overwrite: bool = False) -> NodeKeyPair:
    """Write ``NAME.key`` (OpenSSH private, mode 0600) and ``NAME.pub`` (OpenSSH public)."""
    check_node_name(name)
    out = Path(out)
    pair = NodeKeyPair(out / f"{name}.key", out / f"{name}.pub")
    _refuse_existing([pair.private_key, pair.public_key], overwrite)
    key = ec.generate_private_key(NODE_CURVE())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    _write(pair.private_key, private, 0o600)
    _write(pair.public_key, public + f" {name}\n".encode(), 0o644)
    return pair


def load_node_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    """Read a SuperNode's OpenSSH public key (EC, NIST curve), as ``flwr supernode register``."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise NodeKeyError(f"cannot read SuperNode public key {path}: {exc.strerror}") from None
    try:
        key = serialization.load_ssh_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise NodeKeyError(
            f"{path} is not an OpenSSH public key ({exc}); make a pair with "
            "`edgefleet fl certs node-key`"
        ) from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, _NIST_CURVES):
        raise NodeKeyError(
            f"{path} is not an EC key on a NIST curve (P-256/384/521), which Flower requires; "
            "make a pair with `edgefleet fl certs node-key`"
        )
    return key


def node_public_key_bytes(path: Path) -> bytes:
    """The public key as the Control API's ``RegisterNode`` takes it (PEM SubjectPublicKeyInfo)."""
    return load_node_public_key(path).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
