"""TLS on the REST server (``http.ssl_certfile``/``ssl_keyfile``), and no plain HTTP on a public
host unless a TLS-terminating proxy is declared (``http.plaintext_public``)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from http_helpers import Server, http_settings_for, post, serving
from pydantic import ValidationError

from lakeserve.errors import ConfigError
from lakeserve.jobs.demo_data import request_bodies
from lakeserve.pipelines.http import listen_settings
from lakeserve.pipelines.http_settings import HttpSettings
from lakeserve.settings import Settings


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name | None) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
    )


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A CA, and a server certificate for 127.0.0.1 it signed: (ca.pem, server.pem, server.key)."""
    folder = tmp_path_factory.mktemp("tls")
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (
        _cert("lakeserve test CA", ca_key, None)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server = (
        _cert("127.0.0.1", server_key, ca.subject)
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem, cert_pem, key_pem = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_pem.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return ca_pem, cert_pem, key_pem


@pytest.fixture(scope="module")
def tls(stack: Settings, demo_assets: object, certs: tuple[Path, Path, Path]) -> Iterator[Server]:
    ca, cert, key = certs
    http = {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}
    with serving(http_settings_for(stack, "rest-tls", http=http), verify=ssl.create_default_context(cafile=ca)) as s:
        yield s


def test_scores_over_tls_verified_by_the_ca(tls: Server, demo_assets: object) -> None:
    assert tls.url.startswith("https://127.0.0.1:")
    customers = pd.read_parquet(demo_assets.data_dir / "customers.parquet")  # type: ignore[attr-defined]
    answer = post(tls, request_bodies(customers, 1)[0])
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["predictions"]) == 1


def test_plain_http_to_the_tls_port_fails(tls: Server) -> None:
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{tls.port}/health", timeout=10)


def test_a_client_without_the_ca_refuses_the_server(tls: Server) -> None:
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{tls.url}/health", timeout=10)  # the system's trust store does not know the test CA


def test_tls_settings_are_checked(certs: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, cert, key = certs
    with pytest.raises(ValidationError, match=r"ssl_certfile and http\.ssl_keyfile go together"):
        HttpSettings(ssl_certfile=cert)
    with pytest.raises(ValidationError, match=r"http.ssl_keyfile: no such file"):
        HttpSettings(ssl_certfile=cert, ssl_keyfile=tmp_path / "missing.key")
    assert HttpSettings(host="0.0.0.0", allow_cidrs=["10.0.0.0/8"], ssl_certfile=cert, ssl_keyfile=key).tls


def test_no_plain_http_on_a_public_host_unless_declared() -> None:
    with pytest.raises(ValidationError, match=r"http.host 0.0.0.0 is not loopback and http.ssl_certfile is not set"):
        HttpSettings(host="0.0.0.0", allow_cidrs=["10.0.0.0/8"])
    with pytest.raises(ConfigError, match=r"http: http.host 10.1.2.3 is not loopback"):
        listen_settings(HttpSettings(allow_cidrs=["10.0.0.0/8"]), "10.1.2.3", None)  # --host is checked too
    behind_proxy = HttpSettings(host="0.0.0.0", allow_cidrs=["10.0.0.0/8"], plaintext_public=True)
    assert not behind_proxy.tls
    assert listen_settings(HttpSettings(), "::1", None).host == "::1"  # loopback needs no TLS
