"""Certificates for the local stack's TLS listeners (Redis, Kafka): a CA of its own and a
server certificate it signed, as PEM files, made once per state directory.

For tests and local use only: the keys are written unencrypted next to the data.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12 as p12
from cryptography.x509.oid import NameOID

__all__ = ["Certs", "make_certs", "pkcs12"]

_VALID_DAYS = 30


@dataclass(frozen=True)
class Certs:
    """PEM files: the CA clients trust, and the server's certificate and key."""

    ca: Path
    cert: Path
    key: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def make_certs(directory: Path, *, hosts: tuple[str, ...], ca_name: str = "kafcel dev CA") -> Certs:
    """A CA and a certificate for ``hosts`` (IP addresses or names) in ``directory``;
    kept if already there, so a restarted service and its clients keep trusting them."""
    certs = Certs(
        ca=directory / "ca.pem", cert=directory / "server.pem", key=directory / "server.key"
    )
    if all(p.exists() for p in (certs.ca, certs.cert, certs.key)):
        return certs
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name(ca_name))
        .issuer_name(_name(ca_name))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    certs.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    certs.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(certs.key, key)
    return certs


def pkcs12(certs: Certs, *, password: str) -> Path:
    """The server's key and certificate as a PKCS#12 keystore (what a JVM server such as
    Apache Kafka reads; its PEM keystores want the key encrypted), next to the PEM files."""
    path = certs.cert.with_suffix(".p12")
    key = serialization.load_pem_private_key(certs.key.read_bytes(), password=None)
    cert = x509.load_pem_x509_certificate(certs.cert.read_bytes())
    ca = x509.load_pem_x509_certificate(certs.ca.read_bytes())
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TypeError("the dev stack's keys are EC keys")
    path.write_bytes(
        p12.serialize_key_and_certificates(
            b"kafcel",
            key,
            cert,
            [ca],
            serialization.BestAvailableEncryption(password.encode()),
        )
    )
    path.chmod(0o600)
    return path
