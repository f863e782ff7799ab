"""The sections the jobs own, ``spark`` (where Spark jobs run) and ``schedule``, and the tree the
jobs read: :class:`JobSettings`, the service's tree plus ``spark``, ``monitor``, ``ab``, ``schedule``."""

from __future__ import annotations

from typing import Any, Literal

from apscheduler.triggers.cron import CronTrigger
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from lakeserve.jobs.batch_args import BatchOptions
from lakeserve.monitoring.settings import AbSettings, MonitorSettings
from lakeserve.pipelines.settings import ServiceSettings


class SparkSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    master: str = Field(default="local[*]", description="spark.master: local[*], spark://..., yarn, k8s://...")
    app_name: str = "lakeserve"
    driver_memory: str = "2g"
    shuffle_partitions: int = Field(default=8, ge=1)
    conf: dict[str, str] = Field(default_factory=dict, description="extra Spark configuration")


JobName = Literal["monitor", "ab", "batch-score"]


class ScheduledBatch(BaseModel):
    """What a scheduled ``batch-score`` run reads and writes: the flags of ``jobs run batch-score``
    (``--as-of`` aside: a scheduled run scores rows at their own event times)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: str = Field(min_length=1, description="Delta table or parquet path/URI, or a table name")
    output: str = Field(min_length=1, description="Delta table path/URI, or a table name")
    feature_tables: dict[str, str] = Field(default_factory=dict, description="feature view -> Delta URI")
    features_from_input: bool = False
    timestamp_column: str = Field(default="event_timestamp", min_length=1)
    replace_where: str | None = Field(default=None, description="replace only the output rows matching this")
    overwrite_schema: bool = False
    fail_on_error: bool = False
    params: dict[str, Any] = Field(default_factory=dict, description="the models' params for every row")

    def options(self) -> BatchOptions:
        return BatchOptions(
            feature_tables=dict(self.feature_tables), features_from_input=self.features_from_input,
            timestamp_column=self.timestamp_column, replace_where=self.replace_where,
            overwrite_schema=self.overwrite_schema, fail_on_error=self.fail_on_error, params=dict(self.params),
        )  # fmt: skip


class JobSchedule(BaseModel):
    """One entry of ``schedule.jobs``: a job, its cron expression and, for batch-score, its tables."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job: JobName
    cron: str = Field(description="five-field crontab expression, UTC")
    name: str | None = Field(default=None, min_length=1, description="the run's name in logs (default: job)")
    batch: ScheduledBatch | None = Field(default=None, validate_default=True, description="batch-score only")

    @field_validator("cron")
    @classmethod
    def _crontab(cls, value: str) -> str:
        try:
            CronTrigger.from_crontab(value, timezone="UTC")
        except ValueError as exc:
            raise ValueError(f"not a five-field crontab expression ({exc})") from None
        return value

    @field_validator("batch")
    @classmethod
    def _batch_for_batch_score(cls, value: ScheduledBatch | None, info: ValidationInfo) -> ScheduledBatch | None:
        job = info.data.get("job")
        if job == "batch-score" and value is None:
            raise ValueError("a scheduled batch-score needs its tables: batch: {input: ..., output: ...}")
        if job is not None and job != "batch-score" and value is not None:
            raise ValueError(f"only a batch-score job takes a batch section, not {job}")
        return value

    @property
    def run_name(self) -> str:
        return self.name or self.job


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

    @field_validator("jobs")
    @classmethod
    def _distinct_names(cls, value: list[JobSchedule]) -> list[JobSchedule]:
        names = [j.run_name for j in value]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"two entries are named {twice}; give each its own `name`")
        return value


class JobSettings(ServiceSettings):
    """The service's tree plus what the jobs read: ``spark``, ``monitor``, ``ab`` and ``schedule``."""

    spark: SparkSettings = Field(default_factory=SparkSettings)
    monitor: MonitorSettings = Field(default_factory=MonitorSettings)
    ab: AbSettings = Field(default_factory=AbSettings)
    schedule: ScheduleSettings = Field(default_factory=ScheduleSettings)
