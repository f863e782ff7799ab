"""The ``stack`` section: where the embedded components keep their state, and their ports."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator


class StackSettings(BaseModel):
    """Where the embedded components keep their state, and the ports they listen on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    state_dir: Path = Field(default=Path(".lakeserve"), description="data, logs, pid files")
    cache_dir: Path = Field(default=Path("~/.cache/lakeserve"), description="resolved jars, shared between checkouts")
    kafka_version: str = Field(default="4.1.1", pattern=r"^4\.\d+\.\d+$")
    kafka_port: int = Field(default=9092, ge=1, le=65535)
    kafka_controller_port: int = Field(default=9093, ge=1, le=65535)
    kafka_heap: str = "512m"
    redis_port: int = Field(default=6379, ge=1, le=65535)

    @model_validator(mode="after")
    def _distinct_ports(self) -> StackSettings:
        if self.kafka_port == self.kafka_controller_port:
            raise ValueError("kafka_port and kafka_controller_port must differ")
        return self
