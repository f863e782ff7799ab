"""A/B statistics: tests over sufficient statistics (from Spark aggregates) and bootstrap CIs.

* rates (error rate, accuracy): two-proportion z-test, pooled variance (equals the chi-square
  test of the 2x2 table without continuity correction);
* continuous metrics (latency, prediction): Welch's t-test from means/variances
  (``scipy.stats.ttest_ind_from_stats``) and Mann-Whitney U from rank sums computed in Spark
  (normal approximation with tie and continuity correction, scipy's method for samples over 8);
* AUC and latency percentiles: percentile bootstrap of the difference (treatment - control)
  on at most ``bootstrap_max_rows`` sampled rows per arm; its two-sided p-value is twice the
  smaller tail share of the bootstrap distribution around 0;
* Holm's step-down correction over the p-values of one comparison decides ``significant``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from pyspark.sql import DataFrame


@dataclass(frozen=True, slots=True)
class TestResult:
    statistic: float
    p_value: float


def two_proportion_ztest(x1: int, n1: int, x2: int, n2: int) -> TestResult:
    """z of p2 - p1 with the pooled proportion; two-sided p."""
    from scipy.stats import norm

    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return TestResult(0.0, 1.0)
    z = (x2 / n2 - x1 / n1) / se
    return TestResult(z, float(2 * norm.sf(abs(z))))


def welch_ttest(m1: float, v1: float, n1: int, m2: float, v2: float, n2: int) -> TestResult:
    """Welch's t of sample 2 against sample 1 (sample variances)."""
    from scipy.stats import ttest_ind_from_stats

    if v1 + v2 == 0:
        return TestResult(0.0, 1.0 if m1 == m2 else 0.0)
    res = ttest_ind_from_stats(m2, math.sqrt(v2), n2, m1, math.sqrt(v1), n1, equal_var=False)
    return TestResult(float(res.statistic), float(res.pvalue))


def mann_whitney(u2: float, n1: int, n2: int, tie_sum: float) -> TestResult:
    """U of sample 2 (as ``mannwhitneyu(sample2, sample1)``), asymptotic two-sided p."""
    from scipy.stats import norm

    n = n1 + n2
    mu = n1 * n2 / 2
    s = math.sqrt(n1 * n2 / 12 * ((n + 1) - tie_sum / (n * (n - 1))))
    if s == 0:
        return TestResult(u2, 1.0)
    z = (max(u2, n1 * n2 - u2) - mu - 0.5) / s
    return TestResult(u2, float(min(1.0, 2 * norm.sf(z))))


def rank_sums(
    df: DataFrame, arm: str, value: str, control: str, treatment: str
) -> tuple[float, int, int, float]:
    """(U of treatment, n control, n treatment, Σ(t³ - t) over ties) computed in Spark.

    Exact, with no single-partition window: the counts per distinct value are range-partitioned
    and sorted within each partition; one pass sums each partition's control count (collected:
    one number per partition), the second computes U with each partition's rank offset."""
    from pyspark.sql import functions as sf

    counts = (
        df.where(sf.col(value).isNotNull() & sf.col(arm).isin(control, treatment))
        .groupBy(sf.col(value).cast("double").alias("v"))
        .agg(sf.count_if(sf.col(arm) == control).alias("c"), sf.count_if(sf.col(arm) == treatment).alias("t"))
    )
    ordered = counts.repartitionByRange("v").sortWithinPartitions("v").select("c", "t").cache()
    try:
        totals = dict(ordered.rdd.mapPartitionsWithIndex(_control_total).collect())
        offsets, below = {}, 0
        for index in sorted(totals):
            offsets[index], below = below, below + totals[index]
        parts = ordered.rdd.mapPartitionsWithIndex(lambda i, rows: _u_terms(offsets.get(i, 0), rows)).collect()
    finally:
        ordered.unpersist()
    u, n1, n2, ties = (sum(p[j] for p in parts) for j in range(4))
    return float(u), int(n1), int(n2), float(ties)


def _control_total(index: int, rows: Iterable[Any]) -> Iterator[tuple[int, int]]:
    yield index, sum(int(r[0]) for r in rows)


def _u_terms(below: int, rows: Iterable[Any]) -> Iterator[tuple[float, int, int, float]]:
    """U's terms over one partition of (control count, treatment count) rows in value order."""
    u, n1, n2, ties = 0.0, 0, 0, 0.0
    for c, t in rows:
        u += t * (below + 0.5 * c)
        below += c
        n1, n2 = n1 + c, n2 + t
        k = c + t
        ties += k * k * k - k
    yield u, n1, n2, ties


def bootstrap_diff(
    control: np.ndarray,
    treatment: np.ndarray,
    stat: Callable[[np.ndarray], float],
    resamples: int,
    alpha: float,
    rng: np.random.Generator,
) -> tuple[float, float, float]:
    """(ci_low, ci_high, p) of stat(treatment) - stat(control) by the percentile bootstrap.

    ``control``/``treatment`` are row arrays (1-D, or 2-D with one row per record)."""
    diffs = np.empty(resamples)
    for i in range(resamples):
        c = control[rng.integers(0, len(control), len(control))]
        t = treatment[rng.integers(0, len(treatment), len(treatment))]
        diffs[i] = stat(t) - stat(c)
    lo, hi = np.quantile(diffs, [alpha / 2, 1 - alpha / 2])
    p = min(1.0, 2 * min(float(np.mean(diffs <= 0)), float(np.mean(diffs >= 0))))
    return float(lo), float(hi), p


def auc(rows: np.ndarray) -> float:
    """ROC-AUC of rows (score, label in {0, 1}), ties counted half."""
    from scipy.stats import rankdata

    scores, labels = rows[:, 0], rows[:, 1] > 0.5
    pos = int(labels.sum())
    neg = len(labels) - pos
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def sample_size_proportions(p1: float, p2: float, alpha: float, power: float) -> int | None:
    """Rows per arm to detect p1 vs p2 (two-sided) with the given power."""
    from scipy.stats import norm

    if p1 == p2:
        return None
    za, zb = norm.ppf(1 - alpha / 2), norm.ppf(power)
    bar = (p1 + p2) / 2
    num = za * math.sqrt(2 * bar * (1 - bar)) + zb * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
    needed: float = num * num / (p1 - p2) ** 2
    return math.ceil(needed)


def sample_size_means(sd1: float, sd2: float, delta: float, alpha: float, power: float) -> int | None:
    """Rows per arm to detect a mean difference ``delta`` (normal approximation)."""
    from scipy.stats import norm

    if delta == 0:
        return None
    z = norm.ppf(1 - alpha / 2) + norm.ppf(power)
    needed: float = z * z * (sd1 * sd1 + sd2 * sd2) / (delta * delta)
    return math.ceil(needed)


def holm(p_values: Sequence[float], alpha: float) -> list[bool]:
    """Holm's step-down: which hypotheses are rejected at family-wise level ``alpha``."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    rejected = [False] * len(p_values)
    for rank, i in enumerate(order):
        if p_values[i] > alpha / (len(p_values) - rank):
            break
        rejected[i] = True
    return rejected
