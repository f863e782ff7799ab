"""Profile metrics: the monitored frame (windows x slices x models) and its per-column aggregates.

Everything here stays a Spark DataFrame; nothing is collected. Approximations, as Spark
computes them: ``quantiles`` by ``percentile_approx`` (rank error at most
``1 / quantile_accuracy`` of the window's rows), ``distinct_count`` by
``approx_count_distinct`` (HyperLogLog++, relative standard deviation ``distinct_rsd``).
Counts, nulls, mean, stddev (sample), min and max are exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lakeserve.errors import ConfigError
from lakeserve.monitoring.metrics_tables import GROUP_KEYS, QUANTILE_LEVELS
from lakeserve.monitoring.settings import MonitorSettings
from lakeserve.monitoring.table_schema import BASE_COLUMNS
from lakeserve.monitoring.windows import Granularity, next_window, window_start

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame
    from pyspark.sql.types import StructType


TS = "__ls_ts"
MODEL = "model_id"
LABEL = "__ls_label"
PROBA = "__ls_proba"
ROW_HASH = "__ls_row_hash"
_NUMERIC = ("tinyint", "smallint", "int", "bigint", "float", "double")


@dataclass(frozen=True, slots=True)
class Columns:
    """The monitored columns by kind: numeric ones get KS/Wasserstein, categorical ones chi-square."""

    numeric: tuple[str, ...]
    categorical: tuple[str, ...]

    @property
    def all(self) -> tuple[str, ...]:
        return (*self.numeric, *self.categorical)


def monitored_columns(schema: StructType, cfg: MonitorSettings) -> Columns:
    """The configured columns, or every model input and prediction of the inference table."""
    types = {f.name: f.dataType.simpleString() for f in schema.fields}
    wanted = cfg.columns if cfg.columns is not None else [n for n in types if n not in BASE_COLUMNS]
    missing = [c for c in wanted if c not in types]
    if missing:

        raise ConfigError(f"monitor.columns: not in the inference table: {missing}")
    numeric = [c for c in wanted if _is_numeric(types[c]) and c not in cfg.categorical_columns]
    categorical = [c for c in wanted if types[c] in ("string", "boolean") or c in cfg.categorical_columns]
    return Columns(tuple(numeric), tuple(categorical))


def _is_numeric(spark_type: str) -> bool:
    return spark_type in _NUMERIC or spark_type.startswith("decimal")


def with_windows(df: DataFrame, granularities: Sequence[Granularity]) -> DataFrame:
    """One row per input row and granularity, with ``granularity``, ``window_start``, ``window_end``."""
    from pyspark.sql import functions as sf

    def one(g: Granularity) -> Column:
        start = window_start(g, sf.col(TS))
        return sf.struct(
            sf.lit(g.label).alias("granularity"), start.alias("start"), next_window(g, start).alias("end")
        )

    return (
        df.withColumn("__ls_w", sf.explode(sf.array(*[one(g) for g in granularities])))
        .withColumn("granularity", sf.col("__ls_w.granularity"))
        .withColumn("window_start", sf.col("__ls_w.start"))
        .withColumn("window_end", sf.col("__ls_w.end"))
        .drop("__ls_w")
    )


def with_slices(df: DataFrame, slicing_exprs: Sequence[str]) -> DataFrame:
    """One more row per slicing expression; the whole population has null ``slice_key``/``slice_value``."""
    from pyspark.sql import functions as sf

    whole = sf.struct(sf.lit(None).cast("string").alias("k"), sf.lit(None).cast("string").alias("v"))
    slices = [sf.struct(sf.lit(e).alias("k"), sf.expr(e).cast("string").alias("v")) for e in slicing_exprs]
    return (
        df.withColumn("__ls_s", sf.explode(sf.array(whole, *slices)))
        .withColumn("slice_key", sf.col("__ls_s.k"))
        .withColumn("slice_value", sf.col("__ls_s.v"))
        .drop("__ls_s")
    )


def long_values(df: DataFrame, columns: Sequence[str], keys: Sequence[str], kind: str) -> DataFrame:
    """Stack ``columns`` into (keys..., column_name, value); value is double (numeric) or string."""
    from pyspark.sql import functions as sf

    cast = "double" if kind == "numeric" else "string"
    cells = [
        sf.struct(sf.lit(c).alias("column_name"), sf.col(f"`{c}`").cast(cast).alias("value")) for c in columns
    ]
    out = df.select(*keys, sf.inline(sf.array(*cells)))
    if kind == "numeric":  # NaN counts as missing, as in pandas
        out = out.withColumn("value", sf.when(sf.isnan("value"), None).otherwise(sf.col("value")))
    return out


def column_profiles(expanded: DataFrame, columns: Columns, cfg: MonitorSettings) -> DataFrame:
    """Per (window, model, slice, column): count, nulls, distinct, mean, stddev, min, max, quantiles."""
    from pyspark.sql import functions as sf

    keys = [*GROUP_KEYS, "window_end"]
    frames = []
    for kind, cols in (("numeric", columns.numeric), ("categorical", columns.categorical)):
        if not cols:
            continue
        long = long_values(expanded, cols, keys, kind)
        aggs = [
            sf.count(sf.lit(1)).alias("count"),
            sf.count_if(sf.col("value").isNull()).alias("num_nulls"),
            sf.approx_count_distinct("value", cfg.distinct_rsd).alias("distinct_count"),
        ]
        if kind == "numeric":
            levels = sf.array(*[sf.lit(q) for q in QUANTILE_LEVELS])
            aggs += [
                sf.avg("value").alias("mean"),
                sf.stddev_samp("value").alias("stddev"),
                sf.min("value").alias("min"),
                sf.max("value").alias("max"),
                sf.percentile_approx("value", levels, cfg.quantile_accuracy).alias("quantiles"),
            ]
        prof = long.groupBy(*keys, "column_name").agg(*aggs).withColumn("column_type", sf.lit(kind))
        frames.append(prof)
    out = frames[0]
    for other in frames[1:]:
        out = out.unionByName(other, allowMissingColumns=True)
    return out
