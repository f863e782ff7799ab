"""The ``kafka`` section: connection, security and topics, as kafka-python client options."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

MiB = 1024 * 1024
# headers lakeserve writes itself on answers and dead letters: a request cannot pass its own through
OWN_HEADERS = frozenset({
    "request-id", "client-request-id", "served-model-name", "status", "error-code", "error-message",
    "source-topic", "source-partition", "source-offset", "original-bytes",
})  # fmt: skip


class KafkaSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    bootstrap_servers: list[str] = Field(default_factory=lambda: ["127.0.0.1:9092"], min_length=1)
    requests_topic: str = "lakeserve.requests"
    responses_topic: str = "lakeserve.responses"
    dead_letter_topic: str = "lakeserve.dead-letters"
    group_id: str = "lakeserve"
    partitions: int = Field(default=4, ge=1, description="partitions of topics lakeserve creates")
    session_timeout_ms: int = Field(default=10_000, ge=1000)
    rejoin_timeout_ms: int = Field(
        default=60_000,
        ge=1000,
        description="a worker whose partitions were revoked and not assigned again within this time replaces "
        "its consumer (kafka-python 3 can stall in a rebalance and be expelled from the group)",
    )
    ack_timeout_ms: int = Field(
        default=5_000,
        ge=100,
        description="longest wait for the broker on one attempt (an acknowledgement, a commit, leaving the group); "
        "bounds how long a stop takes when the broker is down",
    )
    stop_timeout_ms: int = Field(
        default=6_000,
        ge=1000,
        description="a stopping worker that has not finished its last append and commit by then exits anyway "
        "(its uncommitted records are replayed by the next owner)",
    )
    retry_backoff_initial_ms: int = Field(default=100, ge=1, description="first wait before retrying a component")
    retry_backoff_max_ms: int = Field(default=5_000, ge=1, description="longest wait between retries (doubling)")
    outage_deadline_ms: int = Field(
        default=30_000,
        ge=0,
        description="a scoring component (Feast, a model runtime) failing this long: its requests are answered 503 "
        "TEMPORARILY_UNAVAILABLE, dead-lettered and logged until it answers again",
    )
    quarantine_after_deaths: int = Field(
        default=3,
        ge=1,
        description="a record whose scoring killed this many workers (a segfault, an OOM kill) is answered 500, "
        "dead-lettered and logged without being scored again",
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    max_message_bytes: int = Field(
        default=20 * MiB,
        ge=MiB,
        description="largest message lakeserve produces and the max.message.bytes of topics it creates (and of "
        "the embedded broker); at least the endpoint's largest request or answer plus headers",
    )

    passthrough_headers: list[str] = Field(
        default_factory=lambda: ["traceparent", "tracestate", "correlation-id"],
        description="request headers copied, by exact name, onto the answer and the dead letter (correlation and "
        "trace ids); []: none",
    )

    @field_validator("passthrough_headers")
    @classmethod
    def _not_own_headers(cls, names: list[str]) -> list[str]:
        for name in names:
            if not name or not name.isprintable() or name != name.strip():
                raise ValueError(f"{name!r} is not a header name: non-empty and printable, no surrounding spaces")
            if name in OWN_HEADERS:
                raise ValueError(f"{name!r} is a header lakeserve writes itself and cannot be passed through")
        return list(dict.fromkeys(names))

    @field_validator("sasl_mechanism")
    @classmethod
    def _no_token_provider(cls, value: str | None) -> str | None:
        if value == "OAUTHBEARER":
            raise ValueError(
                "OAUTHBEARER is not supported: lakeserve has no token provider; use SCRAM-SHA-512, SCRAM-SHA-256 "
                "or PLAIN over SASL_SSL"
            )
        return value

    @model_validator(mode="after")
    def _backoff_ordered(self) -> KafkaSettings:
        if self.retry_backoff_max_ms < self.retry_backoff_initial_ms:
            raise ValueError("retry_backoff_max_ms must be at least retry_backoff_initial_ms")
        return self

    @model_validator(mode="after")
    def _sasl_complete(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL") and self.sasl_mechanism is None:
            raise ValueError(f"security_protocol {self.security_protocol} needs sasl_mechanism")
        if self.sasl_mechanism in {"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"} and not (
            self.sasl_username and self.sasl_password
        ):
            raise ValueError(f"sasl_mechanism {self.sasl_mechanism} needs sasl_username and sasl_password")
        return self

    def client_options(self) -> dict[str, Any]:
        """Connection and security options shared by kafka-python producers, consumers, admins."""
        opts: dict[str, Any] = {
            "bootstrap_servers": list(self.bootstrap_servers),
            "security_protocol": self.security_protocol,
        }
        if self.sasl_mechanism is not None:
            opts["sasl_mechanism"] = self.sasl_mechanism
            opts["sasl_plain_username"] = self.sasl_username
            if self.sasl_password is not None:
                opts["sasl_plain_password"] = self.sasl_password.get_secret_value()
        for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            value = getattr(self, key)
            if value is not None:
                opts[key] = str(value)
        return opts
