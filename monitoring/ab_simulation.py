"""Simulated sticky-routed A/B data, for the tests and the benchmark of the A/B statistics.

Each arm has ``keys`` keys (customers); a key has ``1 + Poisson(records_per_key - 1)``
records. A continuous metric (think latency) is a per-key effect ``N(0, key_sd²)`` plus a
per-record noise ``N(0, record_sd²)``; a binary one (think error) is drawn per record with a
per-key propensity ``Beta`` of mean ``rate`` and concentration ``rate_concentration`` (the
smaller, the more the records of one key agree). A treatment arm may shift the continuous mean
by ``shift`` and the rate by ``rate_shift``.

:func:`p_values` runs, on one draw, the per-record tests the A/B job used to run (Welch, two
proportions, Mann-Whitney on records) beside the key-level ones it runs now (cluster-robust t
on the mean and the rate, Mann-Whitney on key means, the key bootstrap of the median);
:func:`rejection_rates` counts how often each rejects at ``alpha`` over many seeds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from lakeserve.monitoring import ab
from lakeserve.monitoring.ab_clusters import Clustered, ClusterMoments, cluster_bootstrap, cluster_ttest, superiority

PER_RECORD = ("welch_records", "z_records", "mann_whitney_records")
PER_KEY = ("cluster_t_mean", "cluster_t_rate", "mann_whitney_keys", "cluster_bootstrap_median")


@dataclass(frozen=True, slots=True)
class Design:
    keys: int = 200  # per arm
    records_per_key: float = 10.0  # mean
    key_sd: float = 1.0
    record_sd: float = 1.0
    rate: float = 0.1
    rate_concentration: float = 2.0


@dataclass(frozen=True, slots=True)
class Arm:
    key: np.ndarray  # per record: its key's index
    value: np.ndarray  # continuous metric per record
    success: np.ndarray  # binary metric per record (0/1)

    def moments(self, column: np.ndarray) -> ClusterMoments:
        n = np.bincount(self.key)
        s = np.bincount(self.key, weights=column)
        q = np.bincount(self.key, weights=column * column)
        return ClusterMoments.of(n, s, q)

    def key_means(self) -> np.ndarray:
        return np.bincount(self.key, weights=self.value) / np.bincount(self.key)


def draw(design: Design, rng: np.random.Generator, shift: float = 0.0, rate_shift: float = 0.0) -> Arm:
    sizes = 1 + rng.poisson(design.records_per_key - 1, design.keys)
    key = np.repeat(np.arange(design.keys), sizes)
    effect = rng.normal(shift, design.key_sd, design.keys)
    value = effect[key] + rng.normal(0.0, design.record_sd, len(key))
    p = design.rate + rate_shift
    propensity = rng.beta(p * design.rate_concentration, (1 - p) * design.rate_concentration, design.keys)
    success = (rng.random(len(key)) < propensity[key]).astype(float)
    return Arm(key, value, success)


def p_values(
    c: Arm, t: Arm, alpha: float, power: float, rng: np.random.Generator, resamples: int = 0
) -> dict[str, float]:
    """Each test's two-sided p on one draw (the key bootstrap only when ``resamples``)."""
    from scipy.stats import mannwhitneyu

    out = {
        "welch_records": ab.welch_ttest(
            c.value.mean(), c.value.var(ddof=1), len(c.value), t.value.mean(), t.value.var(ddof=1), len(t.value)
        ).p_value,
        "z_records": ab.two_proportion_ztest(
            int(c.success.sum()), len(c.success), int(t.success.sum()), len(t.success)
        ).p_value,
        "mann_whitney_records": float(mannwhitneyu(t.value, c.value).pvalue),
        "cluster_t_mean": cluster_ttest(c.moments(c.value), t.moments(t.value), alpha, power).p_value,
        "cluster_t_rate": cluster_ttest(
            c.moments(c.success), t.moments(t.success), alpha, power, rate=True
        ).p_value,
    }
    cm, tm = c.key_means(), t.key_means()
    u = float(mannwhitneyu(tm, cm).statistic)
    _, counts = np.unique(np.concatenate([cm, tm]), return_counts=True)
    out["mann_whitney_keys"] = superiority(u, len(cm), len(tm), float(np.sum(counts**3 - counts)), alpha)[3]
    if resamples:
        cc, tc = Clustered.group(c.key, c.value), Clustered.group(t.key, t.value)
        out["cluster_bootstrap_median"] = cluster_bootstrap(cc, tc, np.median, resamples, alpha, rng)[2]
    return out


def rejection_rates(
    design: Design,
    seeds: Iterable[int],
    alpha: float,
    power: float,
    shift: float = 0.0,
    rate_shift: float = 0.0,
    resamples: int = 0,
) -> dict[str, float]:
    """Share of seeds on which each test rejects at ``alpha`` (treatment shifted as given)."""
    hits: dict[str, int] = {}
    runs = 0
    for seed in seeds:
        rng = np.random.default_rng(seed)
        c, t = draw(design, rng), draw(design, rng, shift, rate_shift)
        for name, p in p_values(c, t, alpha, power, rng, resamples).items():
            hits[name] = hits.get(name, 0) + (p < alpha)
        runs += 1
    return {name: n / runs for name, n in hits.items()}


def stated_mde(design: Design, alpha: float, power: float, seeds: Iterable[int]) -> tuple[float, float]:
    """The minimum detectable (mean shift, rate shift) the A/B job would state for this design:
    :func:`~lakeserve.monitoring.ab_clusters.cluster_ttest`'s ``mde``, averaged over A/A draws."""
    means, rates = [], []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        c, t = draw(design, rng), draw(design, rng)
        means.append(cluster_ttest(c.moments(c.value), t.moments(t.value), alpha, power).mde)
        rates.append(cluster_ttest(c.moments(c.success), t.moments(t.success), alpha, power, rate=True).mde)
    return float(np.mean(means)), float(np.mean(rates))
