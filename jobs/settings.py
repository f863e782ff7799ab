"""The sections the jobs own, ``spark`` (where Spark jobs run) and ``schedule``, and the tree the
jobs read: :class:`JobSettings`, the service's tree plus ``spark``, ``monitor``, ``ab``, ``schedule``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from lakeserve.monitoring.settings import AbSettings, MonitorSettings
from lakeserve.pipelines.settings import ServiceSettings


class SparkSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    master: str = Field(default="local[*]", description="spark.master: local[*], spark://..., yarn, k8s://...")
    app_name: str = "lakeserve"
    driver_memory: str = "2g"
    shuffle_partitions: int = Field(default=8, ge=1)
    conf: dict[str, str] = Field(default_factory=dict, description="extra Spark configuration")


class JobSchedule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    job: Literal["monitor", "ab"]
    cron: str = Field(description="five-field crontab expression, UTC")


class ScheduleSettings(BaseModel):
    """The ``schedule`` section: cron expressions for the jobs run by ``run_schedule``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    jobs: list[JobSchedule] = Field(
        default_factory=lambda: [
            JobSchedule(job="monitor", cron="*/15 * * * *"),
            JobSchedule(job="ab", cron="0 6 * * *"),
        ]
    )
    max_instances: int = Field(default=1, ge=1, description="runs of one job at a time")
    misfire_grace_s: int = Field(default=300, ge=1)


class JobSettings(ServiceSettings):
    """The service's tree plus what the jobs read: ``spark``, ``monitor``, ``ab`` and ``schedule``."""

    spark: SparkSettings = Field(default_factory=SparkSettings)
    monitor: MonitorSettings = Field(default_factory=MonitorSettings)
    ab: AbSettings = Field(default_factory=AbSettings)
    schedule: ScheduleSettings = Field(default_factory=ScheduleSettings)
