"""The session broker's TLS and SASL_SSL listeners, with certificates and SCRAM users lakeserve made."""

from __future__ import annotations

import ipaddress
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from secure_kafka import secure_kafka

from lakeserve.errors import ComponentError
from lakeserve.pipelines.embedded.kafka import KafkaBroker, ensure_topics, list_topics
from lakeserve.pipelines.embedded.stack import Stack
from lakeserve.pipelines.embedded.tls import ensure_broker_tls
from lakeserve.pipelines.kafka_sinks import KafkaResponseSink
from lakeserve.pipelines.worker import build_worker
from lakeserve.settings import Settings


def _round_trip(settings: Settings, topic: str, values: list[bytes]) -> list[bytes]:
    producer = KafkaProducer(**settings.kafka.client_options(), acks="all")
    for v in values:
        producer.send(topic, v)
    producer.flush()
    producer.close()
    consumer = KafkaConsumer(**settings.kafka.client_options(), enable_auto_commit=False)
    parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    seen: list[bytes] = []
    deadline = time.monotonic() + 30
    while len(seen) < len(values):
        assert time.monotonic() < deadline, f"read {len(seen)} of {len(values)} messages in 30 s"
        for records in consumer.poll(timeout_ms=200).values():
            seen += [r.value for r in records]
    consumer.close()
    return seen


@pytest.mark.parametrize("protocol", ["SSL", "SASL_SSL"])
def test_a_client_verifying_the_ca_produces_and_consumes(stack: Settings, protocol: str) -> None:
    secure = secure_kafka(stack, protocol)  # type: ignore[arg-type]
    topic = f"t.tls-{protocol.lower()}-{uuid.uuid4().hex[:6]}"
    assert ensure_topics(secure.kafka, [topic]) == {topic}  # the admin client over TLS too
    values = [f"message {i}".encode() for i in range(5)]
    assert sorted(_round_trip(secure, topic, values)) == values
    assert secure.kafka.client_options()["ssl_cafile"].endswith("ca.pem")


def test_the_ssl_port_refuses_plaintext_and_unverified_clients(stack: Settings) -> None:
    secure = secure_kafka(stack, "SSL")
    assert list_topics(secure.kafka) is not None
    plaintext = secure.kafka.model_copy(update={"security_protocol": "PLAINTEXT", "ssl_cafile": None})
    assert list_topics(plaintext) is None
    system_trust = secure.kafka.model_copy(update={"ssl_cafile": None})  # lakeserve's CA is not a public one
    assert list_topics(system_trust) is None


def test_a_wrong_password_fails_at_once_with_a_clear_error(stack: Settings) -> None:
    wrong = secure_kafka(stack, "SASL_SSL", password="not-the-password")
    user = wrong.kafka.sasl_username
    expected = (f"kafka: authentication failed for user '{user}' (SCRAM-SHA-512) at "
                f"{wrong.kafka.bootstrap_servers[0]}")  # fmt: skip
    started = time.monotonic()
    for attempt in (lambda: build_worker(wrong), lambda: KafkaResponseSink(wrong.kafka),
                    lambda: ensure_topics(wrong.kafka, ["t.never-created"])):  # fmt: skip
        with pytest.raises(ComponentError) as err:
            attempt()
        assert str(err.value).startswith(expected), err.value
        assert str(err.value).endswith("check kafka.sasl_username and kafka.sasl_password")
    assert time.monotonic() - started < 15  # no retry loop until a bootstrap timeout
    assert list_topics(secure_kafka(stack, "SASL_SSL").kafka) is not None  # the right one logs in


def test_the_status_line_names_the_listeners_and_the_ca(stack: Settings) -> None:
    broker = KafkaBroker(stack.stack)
    assert broker.tls is not None
    assert broker.tls.ca_file.exists()
    assert set(broker.listeners) == {"PLAINTEXT", "SSL", "SASL_SSL"}
    kafka = next(s for s in Stack(stack).status() if s.name == "kafka")
    assert kafka.pid is not None
    assert f"SASL_SSL {broker.listeners['SASL_SSL']}" in kafka.address
    assert f"CA {broker.tls.ca_file}" in kafka.address


def test_certificates_are_made_once_for_loopback_and_again_near_expiry(tmp_path: Path) -> None:
    from cryptography import x509

    tls = ensure_broker_tls(tmp_path)
    ca = x509.load_pem_x509_certificate(tls.ca_file.read_bytes())
    chain = x509.load_pem_x509_certificates(tls.keystore_file.read_bytes().split(b"-----END PRIVATE KEY-----")[1])
    broker = chain[0]
    broker.verify_directly_issued_by(ca)
    san = broker.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert oct(tls.keystore_file.stat().st_mode & 0o777) == "0o600"  # it holds the private key
    first = tls.ca_file.read_bytes()
    assert ensure_broker_tls(tmp_path).ca_file.read_bytes() == first  # kept while valid
    later = datetime.now(UTC) + timedelta(days=800)  # within 30 days of expiry: made again
    assert ensure_broker_tls(tmp_path, now=later).ca_file.read_bytes() != first
