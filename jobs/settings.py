"""The ``spark`` section: where Spark jobs run."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SparkSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    master: str = Field(default="local[*]", description="spark.master: local[*], spark://..., yarn, k8s://...")
    app_name: str = "lakeserve"
    driver_memory: str = "2g"
    shuffle_partitions: int = Field(default=8, ge=1)
    conf: dict[str, str] = Field(default_factory=dict, description="extra Spark configuration")
