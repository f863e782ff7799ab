"""Batch scoring: every row of a table scored by the endpoint's served entities, in one commit.

``run_batch_score(spark, settings, input, output)`` runs, in this order:

1. read the input (a Delta table at one version, or a parquet path);
2. load each routed (and shadow) served entity once on the driver: pin its registry version,
   read its feature service, entity key and prediction columns (:mod:`.batch_plan`);
3. join the feature services' features point-in-time from Feast's Spark offline store over
   Delta (:mod:`.batch_features`), unless ``features_from_input``;
4. score in Arrow batches on the executors (``mapInArrow``, :mod:`.batch_models`) with the
   stream's own scoring core: the same routing, checks, assembly and errors;
5. write the output with one Delta commit (:mod:`.batch_io`); a failed run leaves it unchanged;
6. count the committed rows per served entity and status for the report.

Rows that cannot be scored are output rows with a status and message; they never fail the
job unless ``fail_on_error`` is set. ``python -m lakeserve jobs run batch-score --help`` runs it
from spark-submit, cron or Airflow (exit codes: docs/airflow.md); the cluster is whatever
``spark.master`` names.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING

from lakeserve.errors import ConfigError, LakeserveError
from lakeserve.features.offline import ServiceFeatures, describe_services
from lakeserve.jobs.batch_args import BatchOptions
from lakeserve.jobs.batch_features import delta_version, join_features, resolve_feature_tables
from lakeserve.jobs.batch_io import progress, read_input, resolve_uri, write_output
from lakeserve.jobs.batch_models import RowsFailed, score_partition
from lakeserve.jobs.batch_plan import (
    ROUTING_FIELDS,
    SCORED_AT,
    STATUS_FIELDS,
    EntityPlan,
    LoadedModels,
    ScoringPlan,
    batch_endpoint,
    load_models,
)
from lakeserve.jobs.outcome import JobOutcome
from lakeserve.jobs.settings import JobSettings
from lakeserve.jobs.spark import spark_session
from lakeserve.redact import redact_uri

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger("lakeserve.jobs.batch_score")  # the same name when run with -m


class BatchFailed(LakeserveError):
    """The batch run failed; the output table was not changed (no commit)."""


@dataclass
class BatchReport:
    input: str
    output: str
    input_version: int | None
    output_version: int
    scored_at: datetime
    models: dict[str, str]  # served entity -> "model_name/version"
    feature_tables: dict[str, int]  # feature view -> Delta version read
    rows: int  # input rows scored (shadow copies not counted)
    by_entity: dict[str, int]  # answered rows per served entity
    by_status: dict[int, int]  # answered rows per status code
    shadow_rows: int
    timings_s: dict[str, float]

    @property
    def failed(self) -> int:
        return sum(n for status, n in self.by_status.items() if status != 200)


def run_batch_score(
    spark: SparkSession, settings: JobSettings, input: str, output: str, options: BatchOptions | None = None
) -> BatchReport:
    """Score every row of ``input`` into ``output`` (paths, URIs or table names); see module doc."""
    opts = options or BatchOptions()
    source, target = resolve_uri(settings, input), resolve_uri(settings, output)
    timings: dict[str, float] = {}
    scored_at = datetime.now(UTC).replace(microsecond=0)
    with _stage(timings, "read", f"reading {redact_uri(source)}"):
        frame, input_version = read_input(spark, source)
    with _stage(timings, "models", "loading the served entities"):
        loaded = load_models(settings.endpoint, settings.mlflow, opts.params)
    log.info("batch-score: models %s, routing by %s", loaded.versions, loaded.sticky_key)
    with _stage(timings, "features", "planning the point-in-time feature join"):
        frame, plan, tables = _features(spark, settings, frame, loaded, opts)
    scored = _scored(frame, plan, scored_at)
    writing = f"scoring and writing {redact_uri(target)} (one Delta commit)"
    with _stage(timings, "score+write", writing), progress(spark, "write"):
        _write(scored, target, opts)
    with _stage(timings, "report", "counting the committed rows"):
        version, counts = _committed(spark, target, opts.replace_where)
    return _report(source, target, input_version, version, scored_at, loaded.versions, tables, counts, timings)


def _features(
    spark: SparkSession, settings: JobSettings, frame: DataFrame, loaded: LoadedModels, opts: BatchOptions
) -> tuple[DataFrame, ScoringPlan, dict[str, int]]:
    from pyspark.sql import functions as sf

    names = list(dict.fromkeys(s for s in loaded.feature_services.values() if s is not None))
    services = {s.name: s for s in describe_services(settings.feast, names)}
    if opts.timestamp_column not in frame.columns and opts.as_of is not None:
        frame = frame.withColumn(opts.timestamp_column, sf.lit(opts.as_of.astimezone(UTC)))
    entities = {
        n: EntityPlan(e, loaded.feature_services[n], *_service_fields(services, loaded.feature_services[n]))
        for n, e in loaded.pinned.items()
    }
    all_features = list(dict.fromkeys(f for s in services.values() for f in s.features))
    tables: dict[str, int] = {}
    if opts.features_from_input:
        missing = [f for f in all_features if f not in frame.columns]
        if missing:
            raise ConfigError(f"features_from_input: the input lacks feature columns {missing}")
        looked_up: tuple[str, ...] = ()
    else:
        frame, looked_up, tables = _joined(spark, settings, frame, list(services.values()), opts, all_features)
    plan = ScoringPlan(
        batch_endpoint(settings.endpoint, loaded.pinned), entities, settings.mlflow, loaded.sticky_key,
        loaded.predictions, looked_up, None if opts.features_from_input else opts.timestamp_column,
        opts.fail_on_error, dict(opts.params),
    )  # fmt: skip
    return frame, plan, tables


def _service_fields(
    services: Mapping[str, ServiceFeatures], name: str | None
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    service = services.get(name) if name is not None else None
    return (service.join_keys, service.features) if service is not None else ((), ())


def _joined(
    spark: SparkSession, settings: JobSettings, frame: DataFrame, services: Sequence[ServiceFeatures],
    opts: BatchOptions, features: list[str],
) -> tuple[DataFrame, tuple[str, ...], dict[str, int]]:  # fmt: skip
    if not services:
        return frame, (), {}
    if opts.timestamp_column not in frame.columns:
        raise ConfigError(
            f"the input has no event-time column {opts.timestamp_column!r}; name it with "
            f"--timestamp-column or score every row as of one time with --as-of"
        )
    views = list(dict.fromkeys(v for s in services for v in s.views))
    tables = resolve_feature_tables(spark, settings, views, opts.feature_tables)
    log.info("batch-score: feature tables %s", {v: f"{redact_uri(t.uri)}@v{t.version}" for v, t in tables.items()})
    looked_up = tuple(f for f in features if f not in frame.columns)
    joined = join_features(spark, settings, frame, services, tables, opts.timestamp_column)
    return joined, looked_up, {v: t.version for v, t in tables.items()}


def _scored(frame: DataFrame, plan: ScoringPlan, scored_at: datetime) -> DataFrame:
    """The scoring step as a lazy DataFrame: input and feature columns, routing, predictions."""
    from pyspark.sql import functions as sf
    from pyspark.sql.pandas.types import from_arrow_type
    from pyspark.sql.types import StructField, StructType

    extra = [*ROUTING_FIELDS, *plan.predictions, *STATUS_FIELDS]
    clash = [f.name for f in extra if f.name in frame.columns] + [c for c in frame.columns if c == SCORED_AT]
    if clash:
        raise ConfigError(f"input columns {clash} clash with columns the batch job adds; rename or drop them")
    schema = StructType([*frame.schema.fields, *[StructField(f.name, from_arrow_type(f.type), True) for f in extra]])
    scored = frame.mapInArrow(partial(score_partition, plan), schema)
    return scored.withColumn(SCORED_AT, sf.lit(scored_at))


def _write(scored: DataFrame, target: str, opts: BatchOptions) -> None:
    try:
        write_output(scored, target, opts.replace_where, opts.overwrite_schema)
    except Exception as exc:  # py4j / PySpark errors, a RowsFailed raised on an executor
        reason = RowsFailed.__name__ if RowsFailed.__name__ in str(exc) else type(exc).__name__
        raise BatchFailed(
            f"batch scoring into {redact_uri(target)} failed ({reason}); nothing was committed, "
            f"the table is unchanged: {_first_line(exc)}"
        ) from exc


def _first_line(exc: Exception) -> str:
    text = str(exc)
    marker = f"{RowsFailed.__module__}.{RowsFailed.__name__}: "
    if marker in text:
        return text[text.index(marker) + len(marker) :].splitlines()[0]
    return text.splitlines()[0] if text else type(exc).__name__


def _committed(
    spark: SparkSession, target: str, replace_where: str | None
) -> tuple[int, dict[tuple[str, bool, int], int]]:
    """The version just committed and its row counts by (served entity, shadow, status)."""
    version = delta_version(spark, target)
    rows = spark.read.format("delta").option("versionAsOf", version).load(target)
    if replace_where is not None:
        rows = rows.where(replace_where)
    counts = rows.groupBy("served_entity", "is_shadow", "status_code").count().collect()
    return version, {(r["served_entity"], bool(r["is_shadow"]), int(r["status_code"])): int(r["count"]) for r in counts}


def _report(
    source: str, target: str, input_version: int | None, version: int, scored_at: datetime,
    models: dict[str, str], tables: dict[str, int], counts: dict[tuple[str, bool, int], int],
    timings: dict[str, float],
) -> BatchReport:  # fmt: skip
    by_entity: dict[str, int] = {}
    by_status: dict[int, int] = {}
    for (entity, shadow, status), n in counts.items():
        if not shadow:
            by_entity[entity] = by_entity.get(entity, 0) + n
            by_status[status] = by_status.get(status, 0) + n
    shadow_rows = sum(n for (_, shadow, _), n in counts.items() if shadow)
    report = BatchReport(
        source, target, input_version, version, scored_at, models, tables,
        sum(by_entity.values()), by_entity, by_status, shadow_rows, timings,
    )  # fmt: skip
    log.info("batch-score: committed %s v%d: %s", redact_uri(target), version, format_report(report))
    return report


def run_from_settings(
    settings: JobSettings, input: str, output: str, options: BatchOptions | None = None
) -> JobOutcome:
    """One batch run on the session of ``settings.spark``; ``found``: rows that could not be scored
    (they are output rows with a status; ``fail_on_error`` fails the run instead)."""
    spark = spark_session(settings.spark, tables=settings.tables, ivy_dir=settings.stack.cache_dir / "ivy")
    report = run_batch_score(spark, settings, input, output, options)
    facts = {
        "output": redact_uri(report.output),
        "output_version": report.output_version,
        "input_version": report.input_version,
        "rows": report.rows,
        "not_scored": report.failed,
        "by_entity": report.by_entity,
        "models": report.models,
    }
    return JobOutcome("batch-score", report.failed > 0, format_report(report), facts)


def format_report(report: BatchReport) -> str:
    """One line: rows, per entity, failures, timings."""
    entities = ", ".join(f"{k} {v}" for k, v in sorted(report.by_entity.items()))
    timings = ", ".join(f"{k} {v:.1f}s" for k, v in report.timings_s.items())
    return f"{report.rows} rows ({entities}), {report.failed} not scored; {timings}"


@contextmanager
def _stage(timings: dict[str, float], name: str, what: str) -> Iterator[None]:
    log.info("batch-score: %s ...", what)
    start = time.monotonic()
    try:
        yield
    finally:
        timings[name] = round(time.monotonic() - start, 2)
        log.info("batch-score: %s done in %.1f s", name, timings[name])
