"""A/B inference at the level of the randomisation unit: the routing key.

Routing is sticky per key (``scoring/routing.py``): every record of one customer goes to one
arm, so records are not independent and per-record tests understate the variance (the more
records per key, the more false positives). Here the unit is the key. Each arm of a metric is
summarised by sums over its keys *k* of ``n_k`` (records with a value), ``s_k`` (their sum) and
``q_k`` (their sum of squares)::

    K, N = Σ n_k, S = Σ s_k, Q = Σ q_k, SS = Σ s_k², NN = Σ n_k², SN = Σ s_k·n_k

All are sums, so Spark computes them with two aggregations and nothing is collected per key
(:class:`ClusterMoments`). The arm's mean (a rate when the values are 0/1) is the ratio
estimator ``m = S / N``; its cluster-robust (linearised, CR1) variance is::

    V = K / (K - 1) · Σ (s_k - m·n_k)² / N²  =  K / (K - 1) · (SS - 2·m·SN + m²·NN) / N²

The difference of two arms (treatment - control) has ``se = √(V_c + V_t)``, Satterthwaite
degrees of freedom from ``K_c - 1`` and ``K_t - 1``, a Welch-type t-test and a CI
(:func:`cluster_ttest`). The design effect is ``V`` over the variance the mean would have if
the records were independent (``s² / N``); the minimum detectable effect is
``(t_{1-alpha/2} + t_{power})·se``.

Mann-Whitney runs on per-key means (:func:`superiority`: the effect is P(a treatment key's
mean exceeds a control key's) - 1/2); percentiles and ROC-AUC by a bootstrap that resamples
keys, not records (:func:`cluster_bootstrap`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lakeserve.monitoring.ab import mann_whitney


@dataclass(frozen=True, slots=True)
class ClusterMoments:
    """One arm of one metric, as sums over its keys (see the module docstring)."""

    keys: int
    n: float
    s: float
    q: float
    ss: float
    nn: float
    sn: float

    @classmethod
    def of(cls, n_k: np.ndarray, s_k: np.ndarray, q_k: np.ndarray) -> ClusterMoments:
        """From per-key arrays (keys with no value, ``n_k == 0``, are left out)."""
        keep = n_k > 0
        n_k, s_k, q_k = (np.asarray(a, dtype=float)[keep] for a in (n_k, s_k, q_k))
        return cls(
            int(keep.sum()),
            float(n_k.sum()),
            float(s_k.sum()),
            float(q_k.sum()),
            float(s_k @ s_k),
            float(n_k @ n_k),
            float(s_k @ n_k),
        )

    @property
    def mean(self) -> float:
        return self.s / self.n if self.n else math.nan

    @property
    def variance(self) -> float:
        """Cluster-robust variance of :attr:`mean` (nan with fewer than two keys)."""
        if self.keys < 2:
            return math.nan
        m = self.mean
        spread = max(self.ss - 2 * m * self.sn + m * m * self.nn, 0.0)
        return self.keys / (self.keys - 1) * spread / (self.n * self.n)

    @property
    def naive_variance(self) -> float:
        """The variance of :attr:`mean` if the records were independent (sample variance / N)."""
        if self.n < 2:
            return math.nan
        m = self.mean
        return max(self.q - self.n * m * m, 0.0) / (self.n - 1) / self.n

    @property
    def design_effect(self) -> float:
        """:attr:`variance` over :attr:`naive_variance` (1: keys add nothing; > 1: clustering)."""
        naive = self.naive_variance
        return self.variance / naive if naive > 0 else math.nan


@dataclass(frozen=True, slots=True)
class ClusterDiff:
    """treatment - control, with its CI, test, design effect and minimum detectable effect."""

    control: float
    treatment: float
    difference: float
    ci_low: float
    ci_high: float
    statistic: float
    p_value: float
    df: float
    design_effect: float
    mde: float
    keys_needed: int | None  # per arm, to detect ``difference`` at alpha with power


def cluster_ttest(
    c: ClusterMoments, t: ClusterMoments, alpha: float, power: float, *, rate: bool = False
) -> ClusterDiff:
    """Welch-type t-test of ``t.mean - c.mean`` with cluster-robust variances.

    ``mde`` is the difference the test would detect with ``power`` at these variances; for a
    ``rate`` (0/1 values) the treatment's variance grows with its rate, as ``p·(1 - p)`` (the
    within-key correlation held), and the MDE is the shift of the control's rate towards 1/2
    that is detected with ``power`` once that growth is counted."""
    from scipy.stats import t as student

    d = t.mean - c.mean
    vc, vt = c.variance, t.variance
    var = vc + vt
    naive = c.naive_variance + t.naive_variance
    deff = var / naive if naive > 0 else math.nan
    if not math.isfinite(var):
        return ClusterDiff(c.mean, t.mean, d, math.nan, math.nan, math.nan, 1.0, math.nan, deff, math.nan, None)
    df = _satterthwaite(vc, c.keys, vt, t.keys)
    crit, zb = float(student.ppf(1 - alpha / 2, df)), float(student.ppf(power, df))
    se = math.sqrt(var)
    mde = _rate_mde(c, t, crit + zb) if rate else (crit + zb) * se
    if se == 0:
        p, stat = (1.0, 0.0) if d == 0 else (0.0, math.copysign(math.inf, d))
    else:
        stat = d / se
        p = float(2 * student.sf(abs(stat), df))
    return ClusterDiff(
        c.mean, t.mean, d, d - crit * se, d + crit * se, stat, p, df, deff, mde, _keys_needed(c, t, d, crit + zb)
    )


def _rate_mde(c: ClusterMoments, t: ClusterMoments, z: float) -> float:
    """The fixed point of ``δ = z·√(V_c + V_t·g(δ))``, ``g`` scaling the treatment's variance from
    its rate to the control's rate shifted by δ towards 1/2."""
    pc, pt = c.mean, t.mean
    base = pt * (1 - pt)
    if base <= 0:
        return z * math.sqrt(c.variance + t.variance)
    toward = 1.0 if pc < 0.5 else -1.0
    delta = z * math.sqrt(c.variance + t.variance)
    for _ in range(50):
        p = min(max(pc + toward * delta, 0.0), 1.0)
        nxt = z * math.sqrt(c.variance + t.variance * p * (1 - p) / base)
        if abs(nxt - delta) < 1e-12:
            break
        delta = nxt
    return delta


def _satterthwaite(vc: float, kc: int, vt: float, kt: int) -> float:
    den = vc * vc / (kc - 1) + vt * vt / (kt - 1)
    return (vc + vt) ** 2 / den if den > 0 else float(kc + kt - 2)


def _keys_needed(c: ClusterMoments, t: ClusterMoments, d: float, z: float) -> int | None:
    """Keys per arm (the same in both) at which ``d`` is the minimum detectable effect: each
    arm's variance scales as 1 / keys."""
    if d == 0:
        return None
    return math.ceil(z * z * (c.variance * c.keys + t.variance * t.keys) / (d * d))


def superiority(u: float, n1: int, n2: int, tie_sum: float, alpha: float) -> tuple[float, float, float, float]:
    """(P(T > C) - 1/2, ci_low, ci_high, p) of Mann-Whitney's U of sample 2 (ties count half).

    The CI is the normal one with U's variance under the null (tie-corrected), the variance the
    test itself uses; it is conservative near 1/2 and narrow for very unequal samples."""
    from scipy.stats import norm

    res = mann_whitney(u, n1, n2, tie_sum)
    n = n1 + n2
    var = n1 * n2 / 12 * ((n + 1) - tie_sum / (n * (n - 1))) if n > 1 else 0.0
    effect = u / (n1 * n2) - 0.5
    half = float(norm.ppf(1 - alpha / 2)) * math.sqrt(max(var, 0.0)) / (n1 * n2)
    return effect, effect - half, effect + half, res.p_value


@dataclass(frozen=True, slots=True)
class Clustered:
    """Records grouped by key: ``rows[starts[k]:starts[k + 1]]`` are key k's (1-D or 2-D rows)."""

    rows: np.ndarray
    starts: np.ndarray

    @classmethod
    def group(cls, keys: np.ndarray, rows: np.ndarray) -> Clustered:
        """From one key per row, in any order."""
        _, codes = np.unique(keys, return_inverse=True)
        order = np.argsort(codes, kind="stable")
        counts = np.bincount(codes)
        return cls(rows[order], np.concatenate([[0], np.cumsum(counts)]))

    @property
    def keys(self) -> int:
        return len(self.starts) - 1

    def limit(self, rows: int) -> Clustered:
        """The first keys whose records add up to at most ``rows`` (at least one key)."""
        kept = max(1, int(np.searchsorted(self.starts, rows, side="right")) - 1)
        kept = min(kept, self.keys)
        return Clustered(self.rows[: self.starts[kept]], self.starts[: kept + 1])

    def resample(self, rng: np.random.Generator) -> np.ndarray:
        """The rows of as many keys as there are, drawn with replacement."""
        picked = rng.integers(0, self.keys, self.keys)
        first, lengths = self.starts[picked], np.diff(self.starts)[picked]
        offsets = np.repeat(first - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
        return self.rows[offsets + np.arange(int(lengths.sum()))]


def cluster_bootstrap(
    control: Clustered,
    treatment: Clustered,
    stat: Callable[[np.ndarray], float],
    resamples: int,
    alpha: float,
    rng: np.random.Generator,
) -> tuple[float, float, float]:
    """(ci_low, ci_high, p) of stat(treatment) - stat(control), percentile bootstrap over keys.

    The two-sided p is twice the smaller share of the bootstrap differences on either side of 0."""
    diffs = np.empty(resamples)
    for i in range(resamples):
        diffs[i] = stat(treatment.resample(rng)) - stat(control.resample(rng))
    diffs = diffs[~np.isnan(diffs)]
    if not len(diffs):
        return math.nan, math.nan, 1.0
    lo, hi = np.quantile(diffs, [alpha / 2, 1 - alpha / 2])
    p = min(1.0, 2 * min(float(np.mean(diffs <= 0)), float(np.mean(diffs >= 0))))
    return float(lo), float(hi), p
