"""The A/B job on real Spark + Delta finds planted effects and none on null splits; its tests
equal scipy's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from scipy import stats

from lakeserve.jobs.ab_analysis import run_ab
from lakeserve.monitoring import ab
from lakeserve.monitoring.settings import AbSettings
from lakeserve.monitoring.synthetic import EntitySpec, SyntheticSpec, write_synthetic

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

END = datetime(2025, 1, 2, tzinfo=UTC)


def _run(spark: SparkSession, root: Path, seed: int, treatment: EntitySpec) -> tuple[object, Path]:
    spec = SyntheticSpec(
        rows=6_000,
        windows=1,
        window=timedelta(hours=12),
        seed=seed,
        entities=[EntitySpec("champion", 0.5), treatment],
    )
    write_synthetic(str(root / "payload"), spec, str(root / "labels"))
    cfg = AbSettings(
        control="champion",
        period_days=1,
        prediction_proba_col="probability",
        label_col="label",
        labels_table=str(root / "labels"),
        bootstrap_resamples=300,
        seed=seed,
    )
    report = run_ab(spark, cfg, str(root / "payload"), str(root / "ab"), root / "ab.md", end=END)
    return report, root / "ab.md"


def test_planted_effect_is_found(spark: SparkSession, tmp_path: Path) -> None:
    worse = EntitySpec("challenger", 0.5, error_rate=0.05, latency_ms=26.0, signal=0.3)
    report, md = _run(spark, tmp_path, 11, worse)
    sig = {(r["metric"], r["test"]) for r in report.rows if r.get("significant")}
    assert {
        ("error_rate", "two_proportion_z"),
        ("latency_ms", "welch_t"),
        ("latency_ms", "mann_whitney_u"),
        ("latency_p50", "bootstrap"),
        ("roc_auc", "bootstrap"),
    } <= sig
    assert report.verdicts["challenger"].startswith("challenger vs champion: worse on")
    text = md.read_text()
    assert "| challenger |" in text
    assert "Verdict" in text
    rows = spark.read.format("delta").load(str(tmp_path / "ab")).where("test != 'summary'").count()
    assert rows == len([r for r in report.rows if r["test"] != "summary"])


@pytest.mark.parametrize("seed", [21, 22, 23])
def test_null_split_is_not_significant(spark: SparkSession, tmp_path: Path, seed: int) -> None:
    report, _ = _run(spark, tmp_path, seed, EntitySpec("challenger", 0.5))
    assert report.verdicts == {"challenger": "challenger: no significant difference from champion"}
    assert not any(r.get("significant") for r in report.rows)


def test_tests_equal_scipy_and_false_positive_rate_is_alpha() -> None:
    rng = np.random.default_rng(0)
    rejections = 0
    for _ in range(1000):
        a, b = rng.normal(size=300), rng.normal(size=250)
        w = ab.welch_ttest(a.mean(), a.var(ddof=1), len(a), b.mean(), b.var(ddof=1), len(b))
        assert w.p_value == pytest.approx(stats.ttest_ind(b, a, equal_var=False).pvalue, abs=1e-9)
        rejections += w.p_value < 0.05
    assert 30 <= rejections <= 70  # 1000 x 0.05 = 50, within about 3 sd
    x = rng.integers(0, 20, size=500).astype(float)  # ties
    y = rng.integers(2, 22, size=400).astype(float)
    allv = np.concatenate([x, y])
    vals, counts = np.unique(allv, return_counts=True)
    u = sum(np.sum(y == v) * (np.sum(x < v) + 0.5 * np.sum(x == v)) for v in vals)
    mw = ab.mann_whitney(float(u), len(x), len(y), float(np.sum(counts**3 - counts)))
    ref = stats.mannwhitneyu(y, x)
    assert (mw.statistic, mw.p_value) == (pytest.approx(ref.statistic), pytest.approx(ref.pvalue, abs=1e-9))
    z = ab.two_proportion_ztest(30, 1000, 52, 1000)
    chi = stats.chi2_contingency([[30, 970], [52, 948]], correction=False)
    assert z.p_value == pytest.approx(chi.pvalue, abs=1e-12)
    assert z.statistic**2 == pytest.approx(chi.statistic, rel=1e-9)
    assert ab.holm([0.01, 0.04, 0.03], 0.05) == [True, False, False]
    assert ab.holm([0.01, 0.02, 0.03], 0.05) == [True, True, True]


def test_rank_sums_in_spark_equal_scipy_without_a_single_partition_window(spark: SparkSession) -> None:
    rng = np.random.default_rng(3)
    x = rng.integers(0, 40, size=3000).astype(float)  # control, with ties
    y = rng.integers(3, 43, size=2500).astype(float)  # treatment
    rows = [("champion", float(v)) for v in x] + [("challenger", float(v)) for v in y]
    df = spark.createDataFrame(rows, "arm STRING, v DOUBLE").repartition(4)
    u, n1, n2, ties = ab.rank_sums(df, "arm", "v", "champion", "challenger")
    assert (n1, n2) == (3000, 2500)
    ref = stats.mannwhitneyu(y, x)
    mw = ab.mann_whitney(u, n1, n2, ties)
    assert (mw.statistic, mw.p_value) == (pytest.approx(ref.statistic), pytest.approx(ref.pvalue, abs=1e-9))
