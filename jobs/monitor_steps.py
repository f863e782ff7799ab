"""The steps of one monitor run (profile, drift, Evidently), called by :mod:`lakeserve.jobs.monitor`."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from lakeserve.errors import ConfigError
from lakeserve.monitoring.drift import pool_rare, top_categories
from lakeserve.monitoring.drift_cells import cell_atoms, collect_errors, grid
from lakeserve.monitoring.drift_pairs import (
    CUR_KEYS,
    WS,
    SideErrors,
    WindowPlan,
    categorical_rows,
    collect_counts,
    numeric_pairs,
    numeric_rows,
)
from lakeserve.monitoring.evidently_report import drift_report
from lakeserve.monitoring.metrics_tables import (
    DRIFT_DDL,
    DRIFT_KEYS,
    PROFILE_DDL,
    PROFILE_KEYS,
    TABLE_COLUMN,
    WindowKey,
    ddl_schema,
    merge_rows,
)
from lakeserve.monitoring.profile import LABEL, PROBA, Columns, column_profiles, long_values, with_slices
from lakeserve.monitoring.quality import (
    Metrics,
    classification_metrics,
    confusion_counts,
    regression_metrics,
    regression_sums,
    roc_auc,
)
from lakeserve.monitoring.report_files import ReportFiles
from lakeserve.monitoring.settings import MonitorSettings
from lakeserve.monitoring.windows import Granularity, shift_start

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession


log = logging.getLogger("lakeserve.jobs.monitor")
KEYS = ["granularity", WS, "model_id", "slice_key", "slice_value"]
ENTITY = "__ls_entity"
UNKNOWN_MODEL = ":unknown"


def model_id_of(columns: Sequence[str], model_id_col: str | None) -> Column:
    """The model id of a row: ``model_id_col`` as a string, or (None) ``<served_entity>@<model_version>``
    (the entity alone when the version is null); ``:unknown`` when null."""
    from pyspark.sql import functions as sf

    if model_id_col is not None:
        _need(columns, [model_id_col])
        return sf.coalesce(sf.col(f"`{model_id_col}`").cast("string"), sf.lit(UNKNOWN_MODEL))
    _need(columns, ["served_entity", "model_version"])
    entity, version = sf.col("served_entity").cast("string"), sf.col("model_version").cast("string")
    return (
        sf.when(entity.isNull(), sf.lit(UNKNOWN_MODEL))
        .when(version.isNull(), entity)
        .otherwise(sf.concat(entity, sf.lit("@"), version))
    )


def entity_of(columns: Sequence[str], model_id_col: str | None) -> Column:
    """The served entity a derived model id belongs to (null when ``model_id_col`` names the id)."""
    from pyspark.sql import functions as sf

    if model_id_col is None and "served_entity" in columns:
        return sf.col("served_entity").cast("string")
    return sf.lit(None).cast("string")


def _need(columns: Sequence[str], wanted: Sequence[str]) -> None:
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise ConfigError(f"monitor.model_id_col: {missing} not in the inference table; name the model column")


@dataclass(frozen=True, slots=True)
class MonitorTables:
    """Where the job reads and writes: the inference table, the two metrics tables, the reports."""

    inference: str
    profile: str
    drift: str
    reports_dir: str
    labels: str | None = None
    baseline: str | None = None
    reports: ReportFiles = field(default_factory=ReportFiles)  # how reports reach ``reports_dir``

    @classmethod
    def beside(
        cls, inference: str, cfg: MonitorSettings, storage_options: dict[str, str] | None = None
    ) -> MonitorTables:
        """``<prefix>_profile_metrics`` etc. in the inference table's folder (prefix: the table name);
        ``storage_options``: the tables' store, where the Evidently reports go too."""
        parent, name = inference.rstrip("/").rsplit("/", 1)
        prefix = f"{parent}/{cfg.output_prefix or name}"
        return cls(
            inference,
            f"{prefix}_profile_metrics",
            f"{prefix}_drift_metrics",
            f"{prefix}_evidently",
            cfg.labels_table,
            cfg.baseline_table,
            ReportFiles(storage_options),
        )


@dataclass(frozen=True, slots=True)
class RunContext:
    spark: SparkSession
    cfg: MonitorSettings
    tables: MonitorTables
    grans: dict[str, Granularity]
    columns: Columns
    entities: Mapping[str, str] = field(default_factory=dict)  # derived model id -> served entity


def write_profile(run: RunContext, changed: DataFrame, fps: Mapping[WindowKey, str]) -> int:
    """MERGE the per-column profiles and the ``:table`` rows of the changed windows."""
    table_rows = _table_rows(run, changed, fps)
    frame = column_profiles(changed, run.columns, run.cfg) if run.columns.all else None
    rows = _frame(run.spark, table_rows, PROFILE_DDL)
    if frame is not None:
        rows = rows.unionByName(frame, allowMissingColumns=True)
    merge_rows(run.spark, rows, run.tables.profile, PROFILE_KEYS, PROFILE_DDL)
    return len(table_rows) * (1 + len(run.columns.all))


def _frame(spark: SparkSession, rows: Sequence[Mapping[str, Any]], ddl: str) -> DataFrame:
    schema = ddl_schema(ddl)
    names = schema.fieldNames()
    return spark.createDataFrame([tuple(r.get(n) for n in names) for r in rows], schema)


def _table_rows(run: RunContext, df: DataFrame, fps: Mapping[WindowKey, str]) -> list[dict[str, Any]]:
    from pyspark.sql import functions as sf

    counts = (
        df.groupBy(*KEYS).agg(sf.count(sf.lit(1)).alias("n"), sf.count(LABEL).alias("labeled")).collect()
    )
    quality = _quality(run, df.where(sf.col(LABEL).isNotNull())) if run.cfg.label_col else {}
    rows = []
    for r in counts:
        key = tuple(r[k] for k in KEYS)
        start = datetime.fromtimestamp(r[WS], UTC)
        window = (r.granularity, int(r[WS]), r.model_id)
        rows.append(
            {
                "granularity": r.granularity,
                "window_start": start,
                "window_end": shift_start(run.grans[r.granularity], start, 1),
                "model_id": r.model_id,
                "slice_key": r.slice_key,
                "slice_value": r.slice_value,
                "column_name": TABLE_COLUMN,
                "column_type": "table",
                "count": int(r.n),
                "labeled_count": int(r.labeled),
                **quality.get(key, {}),
                "fingerprint": fps[window] if r.slice_key is None else None,
            }
        )
    return rows


def _quality(run: RunContext, labeled: DataFrame) -> dict[tuple[Any, ...], Metrics]:
    cfg = run.cfg
    if cfg.prediction_col not in labeled.columns:
        raise ConfigError(f"monitor.prediction_col: {cfg.prediction_col!r} is not in the inference table")
    pred = f"`{cfg.prediction_col}`"
    out: dict[tuple[Any, ...], Metrics] = {}
    if cfg.problem_type == "regression":
        for r in regression_sums(labeled, KEYS, LABEL, pred).collect():
            key = tuple(r[k] for k in KEYS)
            out[key] = regression_metrics(int(r.n), r.sum_abs, r.sum_sq, r.sum_y, r.sum_y2)
        return out
    confusion: dict[tuple[Any, ...], dict[tuple[str, str], int]] = {}
    for r in confusion_counts(labeled, KEYS, LABEL, pred).collect():
        confusion.setdefault(tuple(r[k] for k in KEYS), {})[(r.y, r.p)] = int(r.n)
    out = {k: classification_metrics(c, cfg.positive_label) for k, c in confusion.items()}
    if cfg.prediction_proba_col and cfg.positive_label is not None:
        for r in roc_auc(labeled, KEYS, LABEL, PROBA, cfg.positive_label).collect():
            out.setdefault(tuple(r[k] for k in KEYS), {})["roc_auc"] = float(r.roc_auc)
    return out


def drift_rows(run: RunContext, expanded: DataFrame, plan: WindowPlan) -> list[dict[str, Any]]:
    """Drift rows (still keyed by ``__ls_ws``) of every pair of the plan's target windows."""
    rows: list[dict[str, Any]] = []
    baseline = _baseline(run)
    if run.columns.numeric:
        counts, base, errors = _numeric_counts(run, expanded, baseline)
        stats, binned = numeric_pairs(run.spark, counts, plan, base, run.cfg.psi_bins)
        rows += numeric_rows(stats, binned, run.cfg, plan, errors)
    if run.columns.categorical:
        rows += _categorical(run, expanded, plan, baseline)
    log.info("monitor: %d drift rows, %d flagged", len(rows), sum(r["drift_detected"] for r in rows))
    return rows


def _numeric_counts(
    run: RunContext, expanded: DataFrame, baseline: DataFrame | None
) -> tuple[DataFrame, DataFrame | None, SideErrors]:
    """Per-value counts of the windows and the baseline; or, when one of them has more than
    ``drift_exact_max_rows`` rows, cell atoms of all of them on one grid per column
    (:mod:`~lakeserve.monitoring.drift_cells`) and what the atoms lose."""
    from pyspark.sql import functions as sf

    cols, limit = run.columns.numeric, run.cfg.drift_exact_max_rows
    whole = expanded.where(sf.col("slice_key").isNull())
    sizes = [int(r["count"]) for r in whole.groupBy("granularity", WS, "model_id").count().collect()]
    base_whole = baseline.where(sf.col("slice_key").isNull()) if baseline is not None else None
    base_rows = base_whole.count() if base_whole is not None else 0
    if max([*sizes, base_rows]) <= limit:
        base = _value_counts(baseline, cols, _base_keys(baseline)) if baseline is not None else None
        return _value_counts(expanded, cols, KEYS), base, SideErrors()

    log.info("monitor: binned numeric drift on %d cells per column (over %d rows)", run.cfg.drift_cells, limit)
    quoted = [sf.col(f"`{c}`") for c in cols]
    sample = whole.select(*quoted)
    if base_whole is not None:
        sample = sample.unionByName(base_whole.select(*quoted))
    edges = grid(sample, cols, run.cfg.drift_cells, sum(sizes) + base_rows)
    counts, errs = cell_atoms(expanded, cols, KEYS, edges)
    windows = collect_errors(errs, KEYS)
    if baseline is None:
        return counts, None, SideErrors(windows)
    bkeys = _base_keys(baseline)
    base, b_errs = cell_atoms(baseline, cols, bkeys, edges)
    base_errors = {k if "model_id" in bkeys else (None, *k): e for k, e in collect_errors(b_errs, bkeys).items()}
    return counts, base, SideErrors(windows, base_errors)


def _value_counts(df: DataFrame, columns: Sequence[str], keys: Sequence[str]) -> DataFrame:
    """(keys, column_name, value, count) of the non-null values of the numeric ``columns``."""
    from pyspark.sql import functions as sf

    long = long_values(df, columns, keys, "numeric").where(sf.col("value").isNotNull())
    return long.groupBy(*keys, "column_name", "value").count()


def _categorical(
    run: RunContext, expanded: DataFrame, plan: WindowPlan, baseline: DataFrame | None
) -> list[dict[str, Any]]:
    from pyspark.sql import functions as sf

    long = long_values(expanded, run.columns.categorical, KEYS, "categorical")
    whole = long.where(sf.col("slice_key").isNull() & (sf.col("granularity") == run.cfg.granularities[0]))
    top = top_categories(whole, run.cfg.max_categories).cache()
    current = collect_counts(pool_rare(long, top), CUR_KEYS)
    base = None
    if baseline is not None:
        if "model_id" not in baseline.columns:
            baseline = baseline.withColumn("model_id", sf.lit(None).cast("string"))
        bkeys = ["model_id", "slice_key", "slice_value"]
        b = long_values(baseline, run.columns.categorical, bkeys, "categorical")
        base = collect_counts(pool_rare(b, top), [*bkeys, "column_name"])
    top.unpersist()
    return categorical_rows(current, plan, base, run.cfg)


def _base_keys(baseline: DataFrame) -> list[str]:
    return [*(["model_id"] if "model_id" in baseline.columns else []), "slice_key", "slice_value"]


def _baseline(run: RunContext) -> DataFrame | None:
    """The baseline table with slices (and ``model_id`` when it has the model column).

    With derived model ids (``model_id_col`` None) a baseline that has ``served_entity`` is the
    baseline of every version of each entity: its rows of ``champion`` (whatever their version)
    are the reference of ``champion@1`` and of ``champion@2`` alike.
    """
    from pyspark.sql import functions as sf

    if run.tables.baseline is None:
        return None
    df = run.spark.read.format("delta").load(run.tables.baseline)
    if "status_code" in df.columns and not run.cfg.include_errors:
        df = df.where(sf.col("status_code") == 200)
    if run.cfg.model_id_col is None and "served_entity" in df.columns:
        pairs = run.spark.createDataFrame(
            sorted((e, m) for m, e in run.entities.items()), "served_entity STRING, model_id STRING"
        )
        df = df.join(sf.broadcast(pairs), "served_entity")
    elif run.cfg.model_id_col is not None and run.cfg.model_id_col in df.columns:
        df = df.withColumn(
            "model_id", sf.coalesce(sf.col(f"`{run.cfg.model_id_col}`").cast("string"), sf.lit(":unknown"))
        )
    return with_slices(df, run.cfg.slicing_exprs)


def finish_rows(run: RunContext, rows: list[dict[str, Any]], plan: WindowPlan) -> list[dict[str, Any]]:
    """Replace the epoch-second key by window start/end and the reference window's start."""
    out = []
    for r in rows:
        g = run.grans[r["granularity"]]
        start = datetime.fromtimestamp(r[WS], UTC)
        prev = plan.previous.get((r["granularity"], r[WS], r["model_id"]))
        ref = datetime.fromtimestamp(prev[1], UTC) if prev and r["drift_type"] == "consecutive" else None
        out.append(
            {
                **r,
                "window_start": start,
                "window_end": shift_start(g, start, 1),
                "reference_window_start": ref,
            }
        )
    return out


def write_drift(run: RunContext, rows: list[dict[str, Any]]) -> None:
    if rows:
        merge_rows(
            run.spark, _frame(run.spark, rows, DRIFT_DDL), run.tables.drift, DRIFT_KEYS, DRIFT_DDL
        )


def attach_evidently(
    run: RunContext,
    windowed: DataFrame,
    plan: WindowPlan,
    latest: Sequence[WindowKey],
    rows: list[dict[str, Any]],
) -> tuple[list[str], list[str]]:
    """Report on each model's latest window when it was recomputed; returns (reports, disagreements)."""

    reports: list[str] = []
    disagreements: list[str] = []
    drift_type = "baseline" if run.tables.baseline is not None else "consecutive"
    for key in latest:
        if key not in plan.targets:
            continue
        reference = _evidently_reference(run, windowed, plan, key)
        if reference is None:
            continue
        current = _sample(run, _window_rows(windowed, key))
        stem = f"{run.tables.reports_dir.rstrip('/')}/{key[2]}/{_slug(key[0])}/{key[1]}"
        log.info("monitor: Evidently report for %s %s window %s", key[2], key[0], key[1])
        report = drift_report(
            current, reference, run.columns.numeric, run.columns.categorical, stem, run.tables.reports
        )
        reports.append(report.html_path)
        for r in rows:
            if (r["granularity"], r[WS], r["model_id"]) != key or r["slice_key"] is not None:
                continue
            verdict = report.verdicts.get(r["column_name"])
            if r["drift_type"] != drift_type or verdict is None:
                continue
            r.update(
                evidently_report=report.html_path,
                evidently_drift_detected=verdict.drift_detected,
                evidently_method=verdict.method,
                evidently_score=verdict.score,
            )
            if verdict.drift_detected != r["drift_detected"]:
                disagreements.append(
                    f"{key[2]} {key[0]} window {datetime.fromtimestamp(key[1], UTC):%Y-%m-%d %H:%M} "
                    f"{r['column_name']}: monitor says {'drift' if r['drift_detected'] else 'no drift'}, "
                    f"Evidently ({verdict.method}, score {verdict.score}) says "
                    f"{'drift' if verdict.drift_detected else 'no drift'}"
                )
    for d in disagreements:
        log.warning("monitor: verdicts disagree: %s", d)
    return reports, disagreements


def _slug(text: str) -> str:
    return text.replace(" ", "_")


def _window_rows(windowed: DataFrame, key: WindowKey) -> DataFrame:
    from pyspark.sql import functions as sf

    g, ws, model = key
    return windowed.where(
        (sf.col("granularity") == g) & (sf.col(WS) == ws) & (sf.col("model_id") == model)
    )


def _evidently_reference(run: RunContext, windowed: DataFrame, plan: WindowPlan, key: WindowKey) -> Any:
    from pyspark.sql import functions as sf

    baseline = _baseline(run)
    if baseline is not None:
        base = baseline.where(sf.col("slice_key").isNull())
        if "model_id" in base.columns:
            base = base.where(sf.col("model_id") == key[2])
        return _sample(run, base)
    if key not in plan.previous:
        return None
    return _sample(run, _window_rows(windowed, plan.previous[key]))


def _sample(run: RunContext, df: DataFrame) -> Any:
    """At most ``evidently_max_rows`` rows of the monitored columns, as pandas."""
    cols = [f"`{c}`" for c in run.columns.all]
    picked = df.select(*cols)
    n = picked.count()
    limit = run.cfg.evidently_max_rows
    if n > limit:
        picked = picked.sample(fraction=min(1.0, 1.2 * limit / n), seed=0).limit(limit)
    frame: Any = picked.toPandas()
    for c in run.columns.categorical:
        frame[c] = frame[c].astype("string").astype(object)
    return frame
