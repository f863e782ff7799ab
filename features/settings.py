"""The ``feast`` section: which feature repository and which online store."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class FeastSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    project: str = Field(default="lakeserve_demo", pattern=r"^[A-Za-z0-9_]+$")
    repo_path: Path | None = Field(
        default=None, description="Feast registry and data folder; default <state_dir>/feast"
    )
    online_store: Literal["sqlite", "redis"] = "sqlite"
    redis_connection_string: SecretStr = SecretStr("127.0.0.1:6379")
