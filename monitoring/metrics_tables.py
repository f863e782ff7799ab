"""The monitor's output tables, declared here and documented in docs/monitoring.md, and their upsert.

``<prefix>_profile_metrics``: one row per (granularity, window, model, slice, column); the
column ``:table`` holds the table-level figures (row count, model quality, the window
fingerprint the incremental run compares). ``<prefix>_drift_metrics``: one row per
(granularity, window, model, slice, column, drift type), the type being ``consecutive``
(window against the previous window) or ``baseline``.

Both are written only through :func:`merge_rows` (a Delta MERGE on the key columns), so a
re-run replaces rows instead of adding them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lakeserve.errors import ComponentError

if TYPE_CHECKING:
    from delta.tables import DeltaTable
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import StructType

TABLE_COLUMN = ":table"

WINDOW_KEYS = ["granularity", "window_start", "model_id"]
GROUP_KEYS = [*WINDOW_KEYS, "slice_key", "slice_value"]
PROFILE_KEYS = [*GROUP_KEYS, "column_name"]
DRIFT_KEYS = [*GROUP_KEYS, "column_name", "drift_type"]

PROFILE_DDL = """
granularity STRING NOT NULL, window_start TIMESTAMP NOT NULL, window_end TIMESTAMP NOT NULL,
model_id STRING NOT NULL, slice_key STRING, slice_value STRING, column_name STRING NOT NULL,
column_type STRING NOT NULL, count BIGINT, num_nulls BIGINT, distinct_count BIGINT,
mean DOUBLE, stddev DOUBLE, min DOUBLE, max DOUBLE, quantiles ARRAY<DOUBLE>,
labeled_count BIGINT, accuracy DOUBLE, precision DOUBLE, recall DOUBLE, f1 DOUBLE, roc_auc DOUBLE,
mae DOUBLE, rmse DOUBLE, r2 DOUBLE, fingerprint STRING
"""

DRIFT_DDL = """
granularity STRING NOT NULL, window_start TIMESTAMP NOT NULL, window_end TIMESTAMP NOT NULL,
model_id STRING NOT NULL, slice_key STRING, slice_value STRING, column_name STRING NOT NULL,
column_type STRING NOT NULL, drift_type STRING NOT NULL, reference_window_start TIMESTAMP,
count BIGINT, reference_count BIGINT, ks_statistic DOUBLE, ks_pvalue DOUBLE,
wasserstein_distance DOUBLE, wasserstein_normed DOUBLE, chi_squared_statistic DOUBLE,
chi_squared_pvalue DOUBLE, tv_distance DOUBLE, l_infinity_distance DOUBLE, js_distance DOUBLE,
population_stability_index DOUBLE, statistics_method STRING, ks_error_bound DOUBLE,
wasserstein_error_bound DOUBLE, drift_detected BOOLEAN, evidently_report STRING,
evidently_drift_detected BOOLEAN, evidently_method STRING, evidently_score DOUBLE
"""

QUANTILE_LEVELS = [0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0]


def ddl_schema(ddl: str) -> StructType:
    from pyspark.sql.types import StructType

    parsed = StructType.fromDDL(" ".join(ddl.split()))
    assert isinstance(parsed, StructType)
    return parsed


def table_exists(spark: SparkSession, uri: str) -> bool:
    from delta.tables import DeltaTable

    return bool(DeltaTable.isDeltaTable(spark, uri))


def merge_rows(spark: SparkSession, rows: DataFrame, uri: str, keys: list[str], ddl: str) -> None:
    """Upsert ``rows`` into the Delta table at ``uri`` (created with ``ddl`` when missing)."""
    from delta.tables import DeltaTable

    try:
        DeltaTable.createIfNotExists(spark).location(uri).addColumns(ddl_schema(ddl)).execute()
        _add_missing_columns(spark, DeltaTable.forPath(spark, uri), uri, ddl)
        target = DeltaTable.forPath(spark, uri)  # after any schema change: an older handle refuses MERGE
        cond = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in keys)
        source = rows.select(*ddl_schema(ddl).fieldNames())
        target.alias("t").merge(source.alias("s"), cond).whenMatchedUpdateAll().whenNotMatchedInsertAll().execute()
    except Exception as exc:  # py4j / analysis errors arrive untyped
        raise ComponentError("delta", f"MERGE into {uri} failed: {exc}") from exc


def _add_missing_columns(spark: SparkSession, target: DeltaTable, uri: str, ddl: str) -> None:
    """Tables written by an older lakeserve lack the columns added since: add them (nullable)."""
    have = set(target.toDF().columns)
    missing = [f for f in ddl_schema(ddl).fields if f.name not in have]
    if missing:
        cols = ", ".join(f"`{f.name}` {f.dataType.simpleString()}" for f in missing)
        spark.sql(f"ALTER TABLE delta.`{uri}` ADD COLUMNS ({cols})")


WindowKey = tuple[str, int, str]
"""(granularity, window start in epoch seconds, model id): one window of one model."""


def stored_fingerprints(spark: SparkSession, profile_uri: str) -> dict[WindowKey, str]:
    """Window key → fingerprint of the windows already profiled."""
    from pyspark.sql import functions as sf

    if not table_exists(spark, profile_uri):
        return {}
    rows = (
        spark.read.format("delta")
        .load(profile_uri)
        .where((sf.col("column_name") == TABLE_COLUMN) & sf.col("slice_key").isNull())
        .select("granularity", sf.unix_seconds("window_start").alias("ws"), "model_id", "fingerprint")
        .collect()
    )
    return {(r.granularity, int(r.ws), r.model_id): r.fingerprint for r in rows}
