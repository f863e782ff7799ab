"""Key-level A/B statistics (no Spark): they equal the reference formulas, hold their false-positive
rate under sticky routing where the per-record tests do not, and find the effect they say they can.

The simulations are seeded (deterministic): each figure is a fixed number, and the bounds leave
about three binomial standard errors for the number of seeds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import statsmodels.api as sm
from scipy import stats

from lakeserve.monitoring.ab_clusters import Clustered, ClusterMoments, cluster_ttest, superiority
from lakeserve.monitoring.ab_simulation import PER_KEY, PER_RECORD, Design, draw, rejection_rates, stated_mde

ALPHA, POWER = 0.05, 0.8
DESIGN = Design()  # 200 keys per arm, 10 records per key on average, half the variance between keys
SEEDS = 1000


def _se(p: float, runs: int) -> float:
    return math.sqrt(p * (1 - p) / runs)


def test_cluster_variance_equals_the_sandwich_of_statsmodels() -> None:
    rng = np.random.default_rng(1)
    c, t = draw(DESIGN, rng), draw(DESIGN, rng, shift=0.3)
    mc, mt = c.moments(c.value), t.moments(t.value)
    y = np.concatenate([c.value, t.value])
    x = sm.add_constant(np.concatenate([np.zeros(len(c.value)), np.ones(len(t.value))]))
    groups = np.concatenate([c.key, t.key + DESIGN.keys])
    fit = sm.OLS(y, x).fit(cov_type="cluster", cov_kwds={"groups": groups, "use_correction": False})
    res = cluster_ttest(mc, mt, ALPHA, POWER)
    assert res.difference == pytest.approx(fit.params[1], rel=1e-12)
    # statsmodels' uncorrected sandwich; ours carries K / (K - 1) per arm (CR1)
    uncorrected = sum(m.variance * (m.keys - 1) / m.keys for m in (mc, mt))
    assert uncorrected == pytest.approx(fit.bse[1] ** 2, rel=1e-9)
    assert res.ci_low < res.difference < res.ci_high
    assert res.design_effect > 3  # ten correlated records per key are worth far fewer than ten


def test_one_record_per_key_is_welch() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=300), rng.normal(0.2, 1.5, size=250)
    ma, mb = (ClusterMoments.of(np.ones(len(v)), v, v * v) for v in (a, b))
    res = cluster_ttest(ma, mb, ALPHA, POWER)
    ref = stats.ttest_ind(b, a, equal_var=False)
    assert res.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    assert res.statistic == pytest.approx(ref.statistic, rel=1e-9)
    assert res.design_effect == pytest.approx(1.0, rel=1e-9)
    ci = ref.confidence_interval(0.95)
    assert (res.ci_low, res.ci_high) == (pytest.approx(ci.low, rel=1e-9), pytest.approx(ci.high, rel=1e-9))


def test_superiority_is_mann_whitney() -> None:
    rng = np.random.default_rng(3)
    x, y = rng.integers(0, 30, 400).astype(float), rng.integers(2, 32, 350).astype(float)
    ref = stats.mannwhitneyu(y, x)
    _, counts = np.unique(np.concatenate([x, y]), return_counts=True)
    effect, lo, hi, p = superiority(float(ref.statistic), len(x), len(y), float(np.sum(counts**3 - counts)), ALPHA)
    assert p == pytest.approx(ref.pvalue, abs=1e-12)
    assert effect == pytest.approx(ref.statistic / (len(x) * len(y)) - 0.5)
    assert lo < effect < hi
    assert lo > 0  # y is shifted up


def test_a_key_bootstrap_resample_holds_whole_keys() -> None:
    keys = np.array(["b", "a", "b", "c", "a", "b"], dtype=object)
    rows = np.array([20.0, 10.0, 21.0, 30.0, 11.0, 22.0])
    grouped = Clustered.group(keys, rows)
    assert grouped.keys == 3
    assert list(grouped.rows) == [10.0, 11.0, 20.0, 21.0, 22.0, 30.0]
    sample = grouped.resample(np.random.default_rng(0))
    tens = np.floor(sample / 10)
    for k in np.unique(tens):  # each drawn key comes with all its records, once per draw
        size = {1.0: 2, 2.0: 3, 3.0: 1}[k]
        assert np.sum(tens == k) % size == 0
    assert grouped.limit(4).keys == 1  # "a" (2 rows) fits, "a" and "b" (5) do not
    assert grouped.limit(5).keys == 2
    assert grouped.limit(1).keys == 1  # at least one key


def test_a_a_false_positives_stay_at_alpha_where_per_record_tests_do_not() -> None:
    rates = rejection_rates(DESIGN, range(SEEDS), ALPHA, POWER)
    for name in ("cluster_t_mean", "cluster_t_rate", "mann_whitney_keys"):
        assert rates[name] <= ALPHA + 0.02, (name, rates[name])
    # the motivation: the same draws, tested as if records were independent
    for name in PER_RECORD:
        assert rates[name] > 0.2, (name, rates[name])


def test_a_a_false_positives_of_the_key_bootstrap() -> None:
    runs = 200
    rates = rejection_rates(DESIGN, range(runs), ALPHA, POWER, resamples=200)
    assert set(PER_KEY) <= set(rates)
    assert rates["cluster_bootstrap_median"] <= ALPHA + 0.02


def test_the_stated_minimum_detectable_effect_is_found_at_the_stated_power() -> None:
    mean_mde, rate_mde = stated_mde(DESIGN, ALPHA, POWER, range(10_000, 10_050))  # pilot draws
    rates = rejection_rates(DESIGN, range(SEEDS), ALPHA, POWER, shift=mean_mde, rate_shift=rate_mde)
    floor = POWER - 3 * _se(POWER, SEEDS)  # 0.762
    assert rates["cluster_t_mean"] >= floor, rates
    assert rates["cluster_t_rate"] >= floor, rates
    # and it is not a larger effect than said: power at the MDE is about the stated one, not near 1
    assert rates["cluster_t_mean"] <= POWER + 3 * _se(POWER, SEEDS)


def test_rate_mde_counts_the_variance_growing_with_the_rate() -> None:
    rng = np.random.default_rng(4)
    c, t = draw(DESIGN, rng), draw(DESIGN, rng)
    mc, mt = c.moments(c.success), t.moments(t.success)
    plain = cluster_ttest(mc, mt, ALPHA, POWER).mde
    rate = cluster_ttest(mc, mt, ALPHA, POWER, rate=True).mde
    assert rate > plain  # at 10 % a rise raises p(1 - p)
    grown = mt.variance * (mc.mean + rate) * (1 - mc.mean - rate) / (mt.mean * (1 - mt.mean))
    z = stats.t.ppf(1 - ALPHA / 2, cluster_ttest(mc, mt, ALPHA, POWER).df)
    z += stats.t.ppf(POWER, cluster_ttest(mc, mt, ALPHA, POWER).df)
    assert rate == pytest.approx(z * math.sqrt(mc.variance + grown), rel=1e-9)

