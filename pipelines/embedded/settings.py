"""The ``stack`` section: where the embedded components keep their state, and their ports."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

_NOT_IN_PASSWORDS = ',[]" \\'  # Kafka's `storage format --add-scram` cannot carry these


class StackSettings(BaseModel):
    """Where the embedded components keep their state, and the ports they listen on.

    The broker always listens in PLAINTEXT on ``kafka_port`` (its own and the controller's
    traffic use it). ``kafka_ssl_port`` adds a TLS listener, ``kafka_sasl_ssl_port`` a TLS
    listener where clients log in with SCRAM-SHA-512 as one of ``kafka_scram_users``; both use
    certificates lakeserve makes under ``<state_dir>/kafka/tls`` (clients trust ``ca.pem``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    state_dir: Path = Field(default=Path(".lakeserve"), validate_default=True, description="data, logs, pid files")
    cache_dir: Path = Field(
        default=Path("~/.cache/lakeserve"), validate_default=True, description="resolved jars, shared between checkouts"
    )
    kafka_version: str = Field(default="4.1.1", pattern=r"^4\.\d+\.\d+$")
    kafka_port: int = Field(default=9092, ge=1, le=65535)
    kafka_controller_port: int = Field(default=9093, ge=1, le=65535)
    kafka_ssl_port: int | None = Field(default=None, ge=1, le=65535, description="a TLS listener; null: none")
    kafka_sasl_ssl_port: int | None = Field(
        default=None, ge=1, le=65535, description="a TLS listener with SCRAM-SHA-512 logins; null: none"
    )
    kafka_scram_users: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="SCRAM-SHA-512 users (name: password) of the SASL_SSL listener, set when the storage is formatted",
    )
    kafka_heap: str = "512m"
    redis_port: int = Field(default=6379, ge=1, le=65535)

    @field_validator("state_dir", "cache_dir")
    @classmethod
    def _home_expanded(cls, path: Path) -> Path:
        return path.expanduser()  # "~" is the user's home wherever the settings are built, not a folder named "~"

    @field_validator("kafka_scram_users")
    @classmethod
    def _plain_credentials(cls, users: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name, password in users.items():
            if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
                raise ValueError(f"user name {name!r} must be letters, digits, '-', '_' or '.'")
            secret = password.get_secret_value()
            if not secret or any(c in secret for c in _NOT_IN_PASSWORDS) or not secret.isprintable():
                raise ValueError(
                    f"the password of {name!r} must be non-empty, printable, without {_NOT_IN_PASSWORDS!r}"
                )
        return users

    @model_validator(mode="after")
    def _distinct_ports(self) -> StackSettings:
        named = {"kafka_port": self.kafka_port, "kafka_controller_port": self.kafka_controller_port,
                 "kafka_ssl_port": self.kafka_ssl_port, "kafka_sasl_ssl_port": self.kafka_sasl_ssl_port}  # fmt: skip
        ports = [p for p in named.values() if p is not None]
        if len(set(ports)) != len(ports):
            given = ", ".join(f"{k}={v}" for k, v in named.items() if v is not None)
            raise ValueError(f"the Kafka ports must differ ({given})")
        if (self.kafka_sasl_ssl_port is None) != (not self.kafka_scram_users):
            raise ValueError("kafka_sasl_ssl_port and kafka_scram_users go together: a SASL_SSL listener needs users")
        return self
