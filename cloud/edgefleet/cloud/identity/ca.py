"""The project CA: one EC P-256 key that signs device, broker and server certificates and CRLs.

Made with ``cryptography`` (no ``openssl`` needed). Device certificates carry CN = device id
(Mosquitto's ``use_identity_as_username`` takes the CN as the MQTT user) and OU = fleet, and
are for client authentication only. Their keys must be EC on a NIST curve: Flower's SuperNode
authentication accepts nothing else, and one device key is meant to serve MQTT, downloads and
Flower alike (docs/security.md, "Identity and the broker").
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgefleet.cloud.identity.errors import BadRequestKey, CAError
from edgefleet.protocol.topics import validate_id

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
# Device keys: NIST curves only, because Flower's SuperNode authentication takes nothing else.
DEVICE_CURVES = (ec.SECP256R1, ec.SECP384R1)
# Small devices' clocks lag; a certificate valid from "now" fails on one a little behind.
_MAX_BACKDATE = dt.timedelta(hours=1)

PublicKey = ec.EllipticCurvePublicKey


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` with ``mode`` even when the file already exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    os.fchmod(fd, mode)  # O_CREAT's mode does not apply to a file being overwritten
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def check_device_key(key: object) -> PublicKey:
    """``key`` if it can be a device key (EC P-256 or P-384), else :class:`BadRequestKey`."""
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, DEVICE_CURVES):
        raise BadRequestKey(
            "a device key must be EC on P-256 or P-384 (Flower's SuperNode authentication "
            "accepts only NIST curves); `edgefleet agent provision` makes one"
        )
    return key


def _name(cn: str, unit: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgefleet")]
    if unit:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


def _usage(*, ca: bool) -> x509.KeyUsage:
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


def _san(hostnames: Iterable[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for host in hostnames:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            out.append(x509.DNSName(host))
    return out


@dataclass(frozen=True, slots=True)
class ProjectCA:
    """The CA certificate and key in ``directory`` (``ca.crt``, ``ca.key`` mode 0600)."""

    directory: Path
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_path(self) -> Path:
        """The CA certificate's file (what brokers and devices trust)."""
        return self.directory / CA_CERT

    @classmethod
    def load_or_create(cls, directory: Path, *, days: int = 3650) -> Self:
        """Load the CA in ``directory``, making a new one there if it holds none."""
        d = Path(directory)
        cert_file, key_file = d / CA_CERT, d / CA_KEY
        if cert_file.exists() != key_file.exists():
            raise CAError(
                f"{d} holds only one of {CA_CERT} and {CA_KEY}; restore the other (every "
                "device certificate depends on them) or remove both to start a new CA"
            )
        if not cert_file.exists():
            return cls._create(d, days)
        try:
            cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
            key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
        except (ValueError, TypeError, OSError) as exc:
            raise CAError(f"cannot read the project CA in {d}: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CAError(f"{key_file} is not an EC private key")
        if cert.public_key() != key.public_key():
            raise CAError(f"{key_file} is not the key of {cert_file}")
        return cls(d, cert, key)

    @classmethod
    def _create(cls, d: Path, days: int) -> Self:
        now = _now()
        key = ec.generate_private_key(ec.SECP256R1())
        name = _name("edgefleet project CA")
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _MAX_BACKDATE)
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_usage(ca=True), critical=True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        pem_key = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_private(d / CA_KEY, pem_key)
        write_private(d / CA_CERT, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        return cls(d, cert, key)

    def ca_pem(self) -> bytes:
        """The CA certificate, PEM."""
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def _builder(
        self, subject: x509.Name, public_key: object, lifetime: dt.timedelta
    ) -> x509.CertificateBuilder:
        if lifetime <= dt.timedelta(0):
            raise CAError(f"a certificate's validity must be positive, not {lifetime}")
        now = _now()
        ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(public_key)  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - min(_MAX_BACKDATE, lifetime / 4))
            .not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_usage(ca=False), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                critical=False,
            )
        )

    def issue_device_cert(
        self,
        public_key: object,
        device_id: str,
        fleet: str,
        days: int = 90,
        *,
        lifetime: dt.timedelta | None = None,
    ) -> bytes:
        """A client certificate (PEM) for ``device_id`` in ``fleet`` (``lifetime`` over days)."""
        key = check_device_key(public_key)
        validate_id(device_id, "device id")
        validate_id(fleet, "fleet")
        cert = (
            self._builder(_name(device_id, fleet), key, lifetime or dt.timedelta(days=days))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM)

    def issue_server_cert(self, hostnames: list[str], key: object, days: int = 825) -> bytes:
        """A server certificate (PEM) for ``hostnames`` (DNS names or IPs) over ``key``."""
        if not hostnames:
            raise CAError("a server certificate needs at least one host name or IP address")
        public = key.public_key() if hasattr(key, "public_key") else key
        cert = (
            self._builder(_name(hostnames[0]), public, dt.timedelta(days=days))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(_san(hostnames)), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM)

    def crl_pem(self, revoked_serials: Iterable[int], *, days: int = 30) -> bytes:
        """A CRL (PEM) listing ``revoked_serials``, valid ``days`` (OpenSSL refuses a stale one)."""
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now - dt.timedelta(minutes=5))
            .next_update(now + dt.timedelta(days=days))
        )
        for serial in sorted(set(revoked_serials)):
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(now - dt.timedelta(minutes=5))
                .build()
            )
        crl = builder.sign(self.key, hashes.SHA256())
        return crl.public_bytes(serialization.Encoding.PEM)

    def verify_issued(self, pem: bytes) -> x509.Certificate:
        """The certificate in ``pem`` if this CA signed it and it is valid now."""
        try:
            cert = x509.load_pem_x509_certificate(pem)
        except ValueError:
            raise BadRequestKey("the certificate is not PEM X.509") from None
        try:
            cert.verify_directly_issued_by(self.cert)
        except (ValueError, TypeError, InvalidSignature):
            raise BadRequestKey("the certificate was not issued by this cloud's CA") from None
        now = _now()
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            fmt = "%Y-%m-%dT%H:%M:%S"
            span = f"{cert.not_valid_before_utc:{fmt}} to {cert.not_valid_after_utc:{fmt}} UTC"
            raise BadRequestKey(
                f"the certificate is not valid now (valid {span}); provision the device "
                "again with a new claim token"
            )
        return cert


def common_name(cert: x509.Certificate) -> str:
    """The certificate's subject CN (a device id for device certificates)."""
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""
