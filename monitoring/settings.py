"""The ``tables`` section: where Delta tables live and how the service batches its appends."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class TablesSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    root: str | None = Field(default=None, description="root of all tables (path or URI); default <state_dir>/tables")
    flush_rows: int = Field(default=5000, ge=1, description="append once this many rows wait")
    flush_interval_ms: int = Field(default=1000, ge=0, description="...or once the oldest waited this long")
    commit_conflict_retries: int = Field(
        default=10, ge=0, description="appends that lost to a concurrent commit are tried again this many times"
    )
    max_buffered_rows: int = Field(
        default=200_000,
        ge=1,
        description="REST rows waiting while the table is down; beyond this the oldest are dropped and counted "
        "(Kafka rows are never dropped: consumption pauses instead)",
    )
