"""Client settings for the session broker's TLS listeners (the `stack` fixture starts them)."""

from __future__ import annotations

from typing import Literal

from pydantic import SecretStr

from lakeserve.pipelines.embedded.kafka import KafkaBroker
from lakeserve.pipelines.settings import ServiceSettings


def secure_kafka(
    settings: ServiceSettings, protocol: Literal["SSL", "SASL_SSL"], *, password: str | None = None
) -> ServiceSettings:
    """``settings`` with its Kafka clients on the broker's ``protocol`` listener, trusting lakeserve's CA;
    SASL_SSL logs in as the first of ``stack.kafka_scram_users`` (with ``password`` instead, if given)."""
    broker = KafkaBroker(settings.stack)
    assert broker.tls is not None, "the session broker has no TLS listener"
    update: dict[str, object] = {
        "bootstrap_servers": [broker.listeners[protocol]],
        "security_protocol": protocol,
        "ssl_cafile": broker.tls.ca_file,
    }
    if protocol == "SASL_SSL":
        user, secret = next(iter(settings.stack.kafka_scram_users.items()))
        update |= {
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": user,
            "sasl_password": SecretStr(password) if password is not None else secret,
        }
    return settings.model_copy(update={"kafka": settings.kafka.model_copy(update=update)})
