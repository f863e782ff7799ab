"""Certificates for the embedded broker's SSL and SASL_SSL listeners, made once per state folder.

A private certificate authority signs one broker certificate valid for ``127.0.0.1`` and
``localhost`` (so clients verify the host name as well as the chain). Everything is PEM, the
form Kafka reads with ``ssl.keystore.type=PEM`` / ``ssl.truststore.type=PEM`` and kafka-python
reads with ``ssl_cafile``. Clients point ``kafka.ssl_cafile`` at :attr:`BrokerTls.ca_file`.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALID_FOR = timedelta(days=825)
_RENEW_WITHIN = timedelta(days=30)


@dataclass(frozen=True)
class BrokerTls:
    """Where the CA certificate (for clients) and the broker's key and chain (for the broker) lie."""

    ca_file: Path
    keystore_file: Path  # the broker's private key (PKCS#8, unencrypted) followed by its chain


def ensure_broker_tls(folder: Path, now: datetime | None = None) -> BrokerTls:
    """The CA and broker certificate under ``folder``, made (again) when missing or near expiry."""
    tls = BrokerTls(folder / "ca.pem", folder / "broker.pem")
    now = now or datetime.now(UTC)
    if tls.ca_file.exists() and tls.keystore_file.exists() and _valid_until(tls.ca_file) - now > _RENEW_WITHIN:
        return tls
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lakeserve embedded CA")])
    ca_cert = (
        _builder(ca_name, ca_name, ca_key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    broker_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    san = x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cert = (
        _builder(broker_name, ca_name, key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(san, critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    _write_private(tls.keystore_file, key_pem + cert.public_bytes(pem) + ca_cert.public_bytes(pem))
    tls.ca_file.write_bytes(ca_cert.public_bytes(pem))
    return tls


def _builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey,
             now: datetime) -> x509.CertificateBuilder:  # fmt: skip
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + _VALID_FOR)
    )


def _valid_until(path: Path) -> datetime:
    return x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` readable by this user only (it holds a private key)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
