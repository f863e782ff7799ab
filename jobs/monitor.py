"""The monitor job: profile and drift metrics of the inference table, incremental, upserted by MERGE.

Steps of one run (each logged):

1. read the inference table (rows with status 200 unless ``include_errors``), name each row's
   model (by default ``<served_entity>@<model_version>``), join late labels as ``labels_join``
   says and count the labels that found no record;
2. fingerprint every (granularity, window, model): row count and a hash sum of the monitored
   values and labels, plus a hash of the monitor settings and the baseline's Delta version;
3. compare with the fingerprints stored in ``<prefix>_profile_metrics``; only new or changed
   windows are profiled, and their drift (and the consecutive drift of the window after
   them) recomputed; nothing changed → nothing is written;
4. MERGE the profile rows, then the drift rows, keyed as docs/monitoring.md lists;
5. an Evidently report for each model's latest window (first granularity), when that window
   was recomputed, referenced from its drift rows; disagreements are logged and returned.

Entry point: ``python -m lakeserve --config lakeserve.yaml jobs run monitor [--full-refresh] [--fail-on-drift]``
(exit codes and the result line: docs/airflow.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from lakeserve.errors import ComponentError, ConfigError
from lakeserve.jobs.monitor_steps import (
    ENTITY,
    MonitorTables,
    RunContext,
    attach_evidently,
    drift_rows,
    entity_of,
    finish_rows,
    model_id_of,
    write_drift,
    write_profile,
)
from lakeserve.jobs.outcome import JobOutcome
from lakeserve.jobs.settings import JobSettings
from lakeserve.jobs.spark import spark_session
from lakeserve.monitoring.drift_pairs import WS, WindowPlan, keys_frame, plan_windows
from lakeserve.monitoring.metrics_tables import WindowKey, stored_fingerprints
from lakeserve.monitoring.profile import (
    LABEL,
    MODEL,
    PROBA,
    ROW_HASH,
    TS,
    Columns,
    monitored_columns,
    with_slices,
    with_windows,
)
from lakeserve.monitoring.quality import RECORD, as_of_records, dedupe_labels, label_keys
from lakeserve.monitoring.settings import MonitorSettings
from lakeserve.monitoring.windows import parse_granularity

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


log = logging.getLogger("lakeserve.jobs.monitor")


@dataclass(frozen=True, slots=True)
class DriftFlag:
    granularity: str
    window_start: datetime
    model_id: str
    slice_key: str | None
    slice_value: str | None
    column_name: str
    drift_type: str


@dataclass(slots=True)
class MonitorSummary:
    windows_total: int = 0
    windows_processed: int = 0
    labels_matched: int | None = None  # labels (one per key) that labelled a monitored record
    labels_unmatched: int | None = None  # ...and those that found none: never counted as labelled
    profile_rows: int = 0
    drift_rows: int = 0
    flags: list[DriftFlag] = field(default_factory=list)
    reports: list[str] = field(default_factory=list)
    disagreements: list[str] = field(default_factory=list)
    seconds: float = 0.0


def run_monitor(
    spark: SparkSession, cfg: MonitorSettings, tables: MonitorTables, *, full_refresh: bool = False
) -> MonitorSummary:
    """Run the monitor once; see the module docstring for the steps."""
    began = time.monotonic()
    summary = MonitorSummary()
    base, columns, matched = _load(spark, cfg, tables)
    if matched is not None:
        summary.labels_matched, summary.labels_unmatched = matched
        log.info("monitor: %d labels matched a record, %d matched none", *matched)
    run = RunContext(spark, cfg, tables, {g: parse_granularity(g) for g in cfg.granularities}, columns)
    windowed = with_windows(base, list(run.grans.values())).withColumn(WS, _ws())
    current, entities = _fingerprints(windowed, _config_hash(run))
    run = dataclasses.replace(run, entities=entities)
    stored = {} if full_refresh else stored_fingerprints(spark, tables.profile)
    changed = [k for k, fp in current.items() if stored.get(k) != fp]
    summary.windows_total = len(current)
    log.info("monitor: %d windows, %d new or changed", len(current), len(changed))
    if changed:
        plan = plan_windows(current, changed, run.grans)
        _process(run, windowed, plan, current, summary)
    summary.seconds = time.monotonic() - began
    log.info("monitor: done in %.1f s, %d drifted pairs", summary.seconds, len(summary.flags))
    return summary


def _ws() -> Any:
    from pyspark.sql import functions as sf

    return sf.unix_seconds("window_start")


def _process(
    run: RunContext,
    windowed: DataFrame,
    plan: WindowPlan,
    fps: dict[WindowKey, str],
    summary: MonitorSummary,
) -> None:
    from pyspark import StorageLevel
    from pyspark.sql import functions as sf

    needed = sf.broadcast(keys_frame(run.spark, plan.needed))
    expanded = with_slices(
        windowed.join(needed, ["granularity", WS, "model_id"]), run.cfg.slicing_exprs
    )
    expanded = expanded.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        changed = sf.broadcast(keys_frame(run.spark, plan.changed))
        log.info("monitor: step 1/3 profile of %d windows", len(plan.changed))
        summary.profile_rows = write_profile(
            run, expanded.join(changed, ["granularity", WS, "model_id"]), fps
        )
        log.info("monitor: step 2/3 drift of %d windows", len(plan.targets))
        rows = drift_rows(run, expanded, plan)
        if run.cfg.evidently:
            log.info("monitor: step 3/3 Evidently reports")
            summary.reports, summary.disagreements = attach_evidently(
                run, windowed, plan, _latest(run, fps), rows
            )
        rows = finish_rows(run, rows, plan)
        write_drift(run, rows)
        summary.windows_processed = len(plan.changed)
        summary.drift_rows = len(rows)
        summary.flags = sorted((_flag(r) for r in rows if r["drift_detected"]), key=_flag_order)
    finally:
        expanded.unpersist()


def _latest(run: RunContext, fps: dict[WindowKey, str]) -> list[WindowKey]:
    """Each model's latest window of the first granularity."""
    first = run.cfg.granularities[0]
    latest: dict[str, int] = {}
    for g, ws, model in fps:
        if g == first:
            latest[model] = max(ws, latest.get(model, ws))
    return [(first, ws, model) for model, ws in sorted(latest.items())]


def _flag_order(f: DriftFlag) -> tuple[str, str, datetime, str, str, str]:
    return (f.drift_type, f.granularity, f.window_start, f.model_id, f.slice_key or "", f.column_name)


def _load(
    spark: SparkSession, cfg: MonitorSettings, tables: MonitorTables
) -> tuple[DataFrame, Columns, tuple[int, int] | None]:
    """The monitored rows with their model id and label; (matched, unmatched) labels when a
    labels table is joined."""
    from pyspark.sql import functions as sf

    df = _read_delta(spark, tables.inference)
    columns = monitored_columns(df.schema, cfg)
    model = model_id_of(df.columns, cfg.model_id_col)
    entity = entity_of(df.columns, cfg.model_id_col)
    if not cfg.include_errors:
        df = df.where(sf.col("status_code") == 200)
    df, matched = _with_labels(spark, df, cfg, tables)
    proba = sf.col(f"`{cfg.prediction_proba_col}`") if cfg.prediction_proba_col else sf.lit(None)
    hashed = [
        sf.col("request_id"),
        sf.col("record_index"),
        sf.col(LABEL),
        *[sf.col(f"`{c}`") for c in columns.all],
    ]
    df = (
        df.withColumn(TS, sf.col(f"`{cfg.timestamp_col}`").cast("timestamp"))
        .withColumn(MODEL, model)
        .withColumn(ENTITY, entity)
        .withColumn(PROBA, proba.cast("double"))
        .withColumn(ROW_HASH, sf.pmod(sf.xxhash64(*hashed), sf.lit(2_147_483_647)))
    )
    return df.where(sf.col(TS).isNotNull()), columns, matched


def _with_labels(
    spark: SparkSession, df: DataFrame, cfg: MonitorSettings, tables: MonitorTables
) -> tuple[DataFrame, tuple[int, int] | None]:
    """``df`` with ``LABEL``; with a labels table, also how many of its labels (one per key)
    labelled a record of ``df`` and how many labelled none."""
    from pyspark.sql import functions as sf

    if cfg.label_col is None:
        return df.withColumn(LABEL, sf.lit(None).cast("string")), None
    if tables.labels is None:
        return df.withColumn(LABEL, sf.col(f"`{cfg.label_col}`")), None
    raw = _read_delta(spark, tables.labels)
    keys = label_keys(raw, cfg.labels_join, cfg.labels_key_cols)
    key_setting = "labels_key_cols" if cfg.labels_join == "key_as_of" else "labels_join"
    _require(raw.columns, [cfg.label_col], "the labels table", "label_col")
    _require(raw.columns, keys, "the labels table", key_setting)
    _require(df.columns, keys, "the inference table", key_setting)
    if cfg.labels_join == "key_as_of":
        _require(raw.columns, [cfg.labels_timestamp_col], "the labels table", "labels_timestamp_col")
        scored = df.where(~sf.col("is_shadow")) if "is_shadow" in df.columns else df
        total = dedupe_labels(raw, [*keys, cfg.labels_timestamp_col], cfg.label_col, LABEL)
        records = as_of_records(
            scored, raw, keys, cfg.timestamp_col, cfg.labels_timestamp_col, cfg.label_col, cfg.labels_tolerance_s
        ).withColumnRenamed(cfg.label_col, LABEL)
        matched = records.count()  # one record per label that found one
        counts = (matched, total.count() - matched)
        return df.join(records, RECORD, "left"), counts
    keyed = dedupe_labels(raw, keys, cfg.label_col, LABEL)
    matched = keyed.join(df.select(*keys).where(sf.col(keys[0]).isNotNull()), keys, "left_semi").count()
    counts = (matched, keyed.count() - matched)
    return df.join(keyed, keys, "left"), counts


def _require(have: list[str], wanted: list[str], where: str, setting: str) -> None:
    missing = [c for c in wanted if c not in have]
    if missing:
        raise ConfigError(f"monitor.{setting}: {missing} not in {where}")


def _read_delta(spark: SparkSession, uri: str) -> DataFrame:

    try:
        return spark.read.format("delta").load(uri)
    except Exception as exc:  # AnalysisException when missing or not Delta
        raise ComponentError("delta", f"cannot read the Delta table at {uri}: {exc}") from exc


def _config_hash(run: RunContext) -> str:
    """Changes when the settings that shape the figures change (or the baseline gets a new version)."""
    cfg = run.cfg.model_dump_json(exclude={"evidently", "evidently_max_rows"})
    version = ""
    if run.tables.baseline is not None:
        from delta.tables import DeltaTable

        last = DeltaTable.forPath(run.spark, run.tables.baseline).history(1).first()
        version = str(last["version"]) if last is not None else ""
    return hashlib.sha256(f"{cfg}|{run.tables.baseline}@{version}".encode()).hexdigest()[:12]


def _fingerprints(windowed: DataFrame, config_hash: str) -> tuple[dict[WindowKey, str], dict[str, str]]:
    """The fingerprint of every window, and the served entity of every model id."""
    from pyspark.sql import functions as sf

    rows = (
        windowed.groupBy("granularity", WS, "model_id")
        .agg(sf.count(sf.lit(1)).alias("n"), sf.sum(ROW_HASH).alias("h"), sf.first(ENTITY).alias("e"))
        .collect()
    )
    fps = {(r.granularity, int(r[WS]), r.model_id): f"{r.n}:{r.h}:{config_hash}" for r in rows}
    return fps, {r.model_id: r.e for r in rows if r.e is not None}


def _flag(row: dict[str, Any]) -> DriftFlag:
    return DriftFlag(
        row["granularity"],
        row["window_start"],
        row["model_id"],
        row["slice_key"],
        row["slice_value"],
        row["column_name"],
        row["drift_type"],
    )


def run_from_settings(settings: JobSettings, *, full_refresh: bool = False) -> JobOutcome:
    """One monitor run over the endpoint's inference table; ``found``: a pair drifted in a window
    this run (re)computed, so a drifted window is reported by the run that first sees it."""

    tables = MonitorTables.beside(
        settings.inference_table_uri, settings.monitor, settings.tables.delta_storage_options()
    )
    spark = spark_session(settings.spark, tables=settings.tables, ivy_dir=settings.stack.cache_dir / "ivy")
    summary = run_monitor(spark, settings.monitor, tables, full_refresh=full_refresh)
    facts = {
        "drifted_pairs": len(summary.flags),
        "drifted_columns": sorted({f.column_name for f in summary.flags}),
        "windows_processed": summary.windows_processed,
        "windows_total": summary.windows_total,
    }
    return JobOutcome("monitor", bool(summary.flags), format_summary(summary), facts)


def format_summary(s: MonitorSummary) -> str:
    lines = [
        f"windows: {s.windows_processed} processed of {s.windows_total}; "
        f"rows written: {s.profile_rows} profile, {s.drift_rows} drift; {s.seconds:.1f} s",
    ]
    lines += [
        f"DRIFT {f.drift_type:<11} {f.granularity} {f.window_start.astimezone(UTC):%Y-%m-%d %H:%M} "
        f"{f.model_id} {f.column_name}" + (f" [{f.slice_key}={f.slice_value}]" if f.slice_key else "")
        for f in s.flags
    ]
    if s.labels_matched is not None:
        lines.append(f"labels: {s.labels_matched} matched a record, {s.labels_unmatched} matched none")
    lines += [f"report: {r}" for r in s.reports]
    lines += [f"DISAGREE {d}" for d in s.disagreements]
    return "\n".join(lines)
