"""Drift statistics: pure functions over counts, and the Spark aggregations that produce the counts.

Numeric columns (current sample against a reference sample):

* KS statistic ``D = max |F_cur - F_ref|`` and 1-Wasserstein ``W = ∫ |F_cur - F_ref| dx``
  are computed **exactly** in Spark from per-value counts (a sort of the distinct values of
  both samples per pair, running sums over a window), as ``scipy.stats.ks_2samp`` and
  ``scipy.stats.wasserstein_distance`` define them. Only one row per pair is collected.
  Large runs first reduce each side to cell atoms (:mod:`~lakeserve.monitoring.drift_cells`);
  the same code then gives binned statistics with stored error bounds.
* The KS p-value follows ``ks_2samp(method="auto")``: exact when both samples have at most
  10,000 values, Smirnov's asymptotic distribution above.
* PSI on ``bins`` reference-quantile bins: a value ``x`` falls into bin
  ``min(bins - 1, floor(bins * #{ref < x} / n_ref))``; proportions are floored at 1e-4.

Categorical columns: per-value counts are collected (at most ``max_categories`` values per
column, the rest pooled as ``__other__``) and compared on the driver: chi-square test of
the 2xK contingency table (``scipy.stats.chi2_contingency``), total variation distance,
L-infinity distance, Jensen-Shannon distance (base 2, in [0, 1]) and PSI.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, Row

PSI_FLOOR = 1e-4
KS_EXACT_MAX_N = 10_000  # scipy's MAX_AUTO_N
OTHER = "__other__"


@dataclass(frozen=True, slots=True)
class NumericDrift:
    ks_statistic: float
    ks_pvalue: float
    wasserstein_distance: float
    wasserstein_normed: float  # W divided by the reference standard deviation
    population_stability_index: float


@dataclass(frozen=True, slots=True)
class CategoricalDrift:
    chi_squared_statistic: float
    chi_squared_pvalue: float
    tv_distance: float
    l_infinity_distance: float
    js_distance: float
    population_stability_index: float


def ks_pvalue(d: float, n1: int, n2: int) -> float:
    """Two-sided p-value of the two-sample KS statistic ``d``, as ``ks_2samp(method='auto')``."""
    if max(n1, n2) <= KS_EXACT_MAX_N:
        exact = _exact_ks_pvalue(d, n1, n2)
        if exact is not None:
            return exact
    from scipy.stats import kstwo

    m, n = sorted([float(n1), float(n2)], reverse=True)
    return float(np.clip(kstwo.sf(d, np.round(m * n / (m + n))), 0.0, 1.0))


def _exact_ks_pvalue(d: float, n1: int, n2: int) -> float | None:
    """scipy's exact path (a private helper: None when it moved or failed, then asymptotic)."""
    try:
        from scipy.stats._stats_py import _attempt_exact_2kssamp
    except ImportError:
        return None
    success, _, prob = _attempt_exact_2kssamp(n1, n2, math.gcd(n1, n2), d, "two-sided")
    return float(np.clip(prob, 0.0, 1.0)) if success else None


def psi(cur_counts: ArrayLike, ref_counts: ArrayLike) -> float:
    """Population stability index of two count vectors over the same bins."""
    cur = np.asarray(cur_counts, dtype=float)
    ref = np.asarray(ref_counts, dtype=float)
    p = np.maximum(cur / cur.sum(), PSI_FLOOR)
    q = np.maximum(ref / ref.sum(), PSI_FLOOR)
    return float(np.sum((p - q) * np.log(p / q)))


def psi_bins(ref_sorted: np.ndarray, values: np.ndarray, bins: int) -> np.ndarray:
    """Bin index of each value on the reference-quantile bins (the rule the Spark path uses)."""
    below = np.searchsorted(ref_sorted, values, side="left")
    return np.minimum(bins - 1, np.floor(bins * below / len(ref_sorted))).astype(int)


def categorical_drift(cur: Mapping[str, int], ref: Mapping[str, int]) -> CategoricalDrift:
    """All categorical statistics of two value-count maps."""
    from scipy.spatial.distance import jensenshannon

    cats = sorted(set(cur) | set(ref))
    c = np.array([cur.get(k, 0) for k in cats], dtype=float)
    r = np.array([ref.get(k, 0) for k in cats], dtype=float)
    p, q = c / c.sum(), r / r.sum()
    chi2, pval = chi_squared(c, r)
    return CategoricalDrift(
        chi_squared_statistic=chi2,
        chi_squared_pvalue=pval,
        tv_distance=float(0.5 * np.abs(p - q).sum()),
        l_infinity_distance=float(np.abs(p - q).max()),
        js_distance=float(jensenshannon(p, q, base=2)),
        population_stability_index=psi(c, r),
    )


def chi_squared(cur: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """Chi-square test of homogeneity on the 2xK table (scipy's, Yates' correction when K = 2)."""
    from scipy.stats import chi2_contingency

    table = np.vstack([cur, ref])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2:
        return 0.0, 1.0
    res = chi2_contingency(table)
    return float(res.statistic), float(res.pvalue)


def numeric_drift(
    d: float, w: float, n_cur: int, n_ref: int, ref_std: float, bins: tuple[Sequence[float], Sequence[float]]
) -> NumericDrift:
    """Assemble the numeric statistics from the Spark figures of one pair."""
    normed = w / ref_std if ref_std > 0 else (0.0 if w == 0 else math.inf)
    return NumericDrift(d, ks_pvalue(d, n_cur, n_ref), w, normed, psi(*bins))


def numeric_pair_stats(pairs: DataFrame, keys: Sequence[str], bins: int) -> tuple[list[dict[str, Any]], list[Row]]:
    """KS and Wasserstein per pair, and PSI bin counts, from (keys, value, cur_cnt, ref_cnt).

    Exact when each row is a distinct value. With ``cell``, ``lo`` and ``hi`` columns (binned
    sides, :mod:`~lakeserve.monitoring.drift_cells`) KS and the PSI bins are taken at the cell
    ends and ``ks_bound`` bounds the KS error; Wasserstein is always taken over ``value``.

    Returns the collected ``(stats, binned)``: ``stats`` has one dict per pair (the keys,
    ``ks``, ``ks_bound``, ``wasserstein``, ``n_cur``, ``n_ref``, ``ref_mean``, ``ref_std``);
    ``binned`` one row per pair and bin (``bin``, ``c``, ``r``).
    """
    from pyspark.sql import functions as sf

    merged = pairs.groupBy(*keys, "value").agg(sf.sum("cur_cnt").alias("c"), sf.sum("ref_cnt").alias("r"))
    w = _running(merged, keys, "value").cache()
    ref_mean = sf.sum(sf.col("r") * sf.col("value")) / sf.first("n_ref")
    ref_sq = sf.sum(sf.col("r") * sf.col("value") * sf.col("value")) / sf.first("n_ref")
    stats = w.groupBy(*keys).agg(
        sf.max(_cdf_gap()).alias("ks"),
        sf.sum(_cdf_gap() * sf.coalesce(sf.col("next") - sf.col("value"), sf.lit(0.0))).alias("wasserstein"),
        sf.first("n_cur").alias("n_cur"),
        sf.first("n_ref").alias("n_ref"),
        ref_mean.alias("ref_mean"),
        sf.sqrt(sf.greatest(ref_sq - ref_mean * ref_mean, sf.lit(0.0))).alias("ref_std"),
    )
    at = w
    cell_stats: dict[tuple[Any, ...], Row] = {}
    if "cell" in pairs.columns:
        cells = pairs.groupBy(*keys, "cell").agg(
            sf.sum("cur_cnt").alias("c"),
            sf.sum("ref_cnt").alias("r"),
            sf.min("lo").alias("lo"),
            sf.max("hi").alias("hi"),
        )
        at = _running(cells, keys, "cell")
        share = sf.greatest(sf.col("c") / sf.col("n_cur"), sf.col("r") / sf.col("n_ref"))
        ks = at.groupBy(*keys).agg(
            sf.max(_cdf_gap()).alias("ks"),
            sf.max(sf.when(sf.col("hi") > sf.col("lo"), share).otherwise(0.0)).alias("ks_bound"),
        )
        cell_stats = {tuple(r[k] for k in keys): r for r in ks.collect()}
    bin_col = sf.least(sf.lit(bins - 1), sf.floor(bins * (sf.col("cr") - sf.col("r")) / sf.col("n_ref")))
    binned = (
        at.withColumn("bin", bin_col.cast("int"))
        .groupBy(*keys, "bin")
        .agg(sf.sum("c").alias("c"), sf.sum("r").alias("r"))
    )
    try:
        out = []
        for r in stats.collect():
            row = r.asDict() | {"ks_bound": 0.0}
            cell = cell_stats.get(tuple(r[k] for k in keys))
            if cell is not None:
                row |= {"ks": cell.ks, "ks_bound": cell.ks_bound}
            out.append(row)
        return out, binned.collect()
    finally:
        w.unpersist()


def _running(df: DataFrame, keys: Sequence[str], order: str) -> DataFrame:
    """``df`` (keys, ``order``, c, r) with both sides' totals and running sums in ``order``, and the
    next ``value``; pairs with an empty side are dropped."""
    from pyspark.sql import Window
    from pyspark.sql import functions as sf

    part = Window.partitionBy(*keys)
    run = part.orderBy(order).rowsBetween(Window.unboundedPreceding, Window.currentRow)
    out = (
        df.withColumn("n_cur", sf.sum("c").over(part))
        .withColumn("n_ref", sf.sum("r").over(part))
        .withColumn("cc", sf.sum("c").over(run))
        .withColumn("cr", sf.sum("r").over(run))
    )
    if order == "value":
        out = out.withColumn("next", sf.lead("value").over(part.orderBy("value")))
    return out.where((sf.col("n_cur") > 0) & (sf.col("n_ref") > 0))


def _cdf_gap() -> Column:
    from pyspark.sql import functions as sf

    return sf.abs(sf.col("cc") / sf.col("n_cur") - sf.col("cr") / sf.col("n_ref"))


def top_categories(long: DataFrame, limit: int) -> DataFrame:
    """(column_name, value) of each column's ``limit`` most frequent values in ``long``."""
    from pyspark.sql import Window
    from pyspark.sql import functions as sf

    counts = long.where(sf.col("value").isNotNull()).groupBy("column_name", "value").count()
    rank = sf.row_number().over(Window.partitionBy("column_name").orderBy(sf.desc("count"), "value"))
    return counts.withColumn("rank", rank).where(sf.col("rank") <= limit).select("column_name", "value")


def pool_rare(long: DataFrame, top: DataFrame) -> DataFrame:
    """Replace values outside ``top`` by ``__other__`` (nulls stay null and are not compared)."""
    from pyspark.sql import functions as sf

    kept = top.withColumn("__ls_kept", sf.lit(True))
    joined = long.join(sf.broadcast(kept), ["column_name", "value"], "left")
    value = sf.when(sf.col("value").isNull() | sf.col("__ls_kept"), sf.col("value")).otherwise(sf.lit(OTHER))
    return joined.withColumn("value", value).drop("__ls_kept")
