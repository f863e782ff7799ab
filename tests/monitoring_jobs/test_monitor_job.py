"""The monitor job on real Spark + Delta: planted drift found exactly, statistics equal scipy's,
quality equals scikit-learn's, re-runs change nothing, late labels and new windows are picked up."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon
from sklearn import metrics as skm

from lakeserve.jobs.monitor import MonitorTables, run_monitor
from lakeserve.monitoring.drift import psi, psi_bins
from lakeserve.monitoring.settings import MonitorSettings
from lakeserve.monitoring.synthetic import SyntheticSpec, synthetic_inference

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

START = datetime(2025, 1, 1, tzinfo=UTC)
# as planted by the fixtures in conftest.py
DRIFT_COLUMNS = ("num_1", "cat_1")
DRIFT_FROM = 2
WINDOWS = 4
# the synthetic entities serve versions 1 and 2; the monitor's default model id is entity@version
MODEL_ID = {"champion": "champion@1", "challenger": "challenger@2"}
Monitored = Any


def _window(i: int) -> datetime:
    return START + timedelta(hours=i)


def _rows(uri: str, **equal: Any) -> list[dict[str, Any]]:
    """Rows of a metrics table whose columns equal the given values (None: null), read with delta-rs
    (a Spark query per lookup cost seconds each)."""
    from deltalake import DeltaTable

    df = DeltaTable(uri).to_pandas()
    for column, value in equal.items():
        df = df[df[column].isna()] if value is None else df[df[column] == value]
    return [r | {"ws": int(r["window_start"].timestamp())} for r in df.to_dict("records")]


def _frame(m: Monitored) -> pd.DataFrame:
    df = m.data.to_pandas()
    df = df[df.status_code == 200].copy()
    df["w"] = ((df.timestamp - pd.Timestamp(START)).dt.total_seconds() // 3600).astype(int)
    return df


def test_planted_drift_is_flagged_in_exactly_those_columns_and_windows(drifted: Monitored) -> None:
    flagged = {(f.drift_type, f.window_start, f.column_name) for f in drifted.summary.flags}
    expected = {("consecutive", _window(DRIFT_FROM), c) for c in DRIFT_COLUMNS}
    expected |= {("baseline", _window(w), c) for w in range(DRIFT_FROM, WINDOWS) for c in DRIFT_COLUMNS}
    assert flagged == expected
    whole = {
        (f.drift_type, f.window_start, f.column_name, f.model_id)
        for f in drifted.summary.flags
        if f.slice_key is None
    }
    assert whole == {(*e, m) for e in expected for m in MODEL_ID.values()}


def test_undrifted_table_flags_nothing(undrifted: Monitored) -> None:
    assert undrifted.summary.windows_processed == WINDOWS * 2
    assert undrifted.summary.drift_rows > 0
    assert undrifted.summary.flags == []


@pytest.mark.parametrize("column", ["num_0", "num_1", "n_items", "probability"])
def test_numeric_drift_statistics_equal_scipy(drifted: Monitored, column: str) -> None:
    df = _frame(drifted)
    champ = df[df.served_entity == "champion"]
    for w in range(1, WINDOWS):
        cur, ref = champ[champ.w == w][column].dropna(), champ[champ.w == w - 1][column].dropna()
        (row,) = _rows(
            drifted.tables.drift,
            model_id=MODEL_ID["champion"],
            slice_key=None,
            column_name=column,
            drift_type="consecutive",
            window_start=_window(w),
        )
        ks = stats.ks_2samp(cur, ref)
        assert (row["count"], row["reference_count"]) == (len(cur), len(ref))
        assert row["ks_statistic"] == pytest.approx(ks.statistic, abs=1e-9)
        assert row["ks_pvalue"] == pytest.approx(ks.pvalue, abs=1e-6)
        assert row["wasserstein_distance"] == pytest.approx(stats.wasserstein_distance(cur, ref), abs=1e-6)
        assert row["wasserstein_normed"] == pytest.approx(
            stats.wasserstein_distance(cur, ref) / np.std(ref), rel=1e-6
        )
        bins = drifted.cfg.psi_bins
        sorted_ref = np.sort(ref.to_numpy())
        c = np.bincount(psi_bins(sorted_ref, cur.to_numpy(), bins), minlength=bins)
        r = np.bincount(psi_bins(sorted_ref, sorted_ref, bins), minlength=bins)
        assert row["population_stability_index"] == pytest.approx(psi(c, r), abs=1e-9)
        assert (row["statistics_method"], row["ks_error_bound"], row["wasserstein_error_bound"]) == ("exact", 0, 0)


def _numeric_pairs(m: Monitored, column: str) -> list[tuple[str, int, pd.Series, pd.Series]]:
    """(drift type, window, current values, reference values) of every champion pair of ``column``."""
    from deltalake import DeltaTable

    df = _frame(m)
    champ = df[df.served_entity == "champion"]
    assert m.cfg.baseline_table is not None
    base = DeltaTable(m.cfg.baseline_table).to_pandas()
    base = base[(base.status_code == 200) & (base.served_entity == "champion")][column].dropna()
    out = []
    for w in range(WINDOWS):
        cur = champ[champ.w == w][column].dropna()
        out.append(("baseline", w, cur, base))
        if w > 0:
            out.append(("consecutive", w, cur, champ[champ.w == w - 1][column].dropna()))
    return out


@pytest.mark.parametrize("column", ["num_0", "num_1", "n_items", "probability"])
def test_binned_statistics_are_within_their_bounds_of_scipy(binned: Monitored, column: str) -> None:
    """Above ``drift_exact_max_rows`` KS and Wasserstein come from cell atoms; the stored bounds hold
    against scipy on the raw values, and the reference std (normed Wasserstein) stays exact."""
    for drift_type, w, cur, ref in _numeric_pairs(binned, column):
        (row,) = _rows(
            binned.tables.drift,
            model_id=MODEL_ID["champion"],
            slice_key=None,
            column_name=column,
            drift_type=drift_type,
            window_start=_window(w),
        )
        assert row["statistics_method"] == "binned"
        assert (row["count"], row["reference_count"]) == (len(cur), len(ref))
        d, wd = stats.ks_2samp(cur, ref).statistic, stats.wasserstein_distance(cur, ref)
        ks_bound, w_bound = row["ks_error_bound"], row["wasserstein_error_bound"]
        assert d - ks_bound - 1e-12 <= row["ks_statistic"] <= d + 1e-12  # binned KS never overstates
        assert abs(row["wasserstein_distance"] - wd) <= w_bound + 1e-12
        assert row["wasserstein_normed"] * np.std(ref) == pytest.approx(row["wasserstein_distance"], rel=1e-7)
        assert ks_bound < 0.03  # about 2 cells of 100: useful, not vacuous
        assert w_bound < 0.06 * np.std(ref)
        if column != "n_items":  # continuous: every cell holds distinct values, so the bound is not 0
            assert ks_bound > 0
            assert w_bound > 0


def test_binned_run_flags_what_the_exact_run_flags(binned: Monitored, drifted: Monitored) -> None:
    assert binned.summary.flags == drifted.summary.flags


def test_categorical_drift_statistics_equal_scipy(drifted: Monitored) -> None:
    df = _frame(drifted)
    base = drifted_baseline(drifted)
    chal = df[df.served_entity == "challenger"]
    for w in range(WINDOWS):
        cur = chal[chal.w == w].cat_1.value_counts()
        (row,) = _rows(
            drifted.tables.drift,
            model_id=MODEL_ID["challenger"],
            slice_key=None,
            column_name="cat_1",
            drift_type="baseline",
            window_start=_window(w),
        )
        cats = sorted(set(cur.index) | set(base.index))
        c = np.array([cur.get(k, 0) for k in cats], dtype=float)
        r = np.array([base.get(k, 0) for k in cats], dtype=float)
        chi = stats.chi2_contingency(np.vstack([c, r]))
        p, q = c / c.sum(), r / r.sum()
        assert row["chi_squared_statistic"] == pytest.approx(chi.statistic, abs=1e-6)
        assert row["chi_squared_pvalue"] == pytest.approx(chi.pvalue, abs=1e-6)
        assert row["tv_distance"] == pytest.approx(0.5 * np.abs(p - q).sum(), abs=1e-9)
        assert row["l_infinity_distance"] == pytest.approx(np.abs(p - q).max(), abs=1e-9)
        assert row["js_distance"] == pytest.approx(jensenshannon(p, q, base=2), abs=1e-9)
        assert row["population_stability_index"] == pytest.approx(psi(c, r), abs=1e-9)


def drifted_baseline(m: Monitored) -> pd.Series:
    assert m.cfg.baseline_table is not None
    from deltalake import DeltaTable

    b = DeltaTable(m.cfg.baseline_table).to_pandas()
    b = b[(b.status_code == 200) & (b.served_entity == "challenger")]
    return b.cat_1.value_counts()


def test_profile_metrics_equal_numpy(drifted: Monitored) -> None:
    df = _frame(drifted)
    sliced = df[(df.served_entity == "champion") & (df.w == 1) & (df.n_items > 2)]
    (row,) = _rows(
        drifted.tables.profile,
        model_id=MODEL_ID["champion"],
        slice_key="n_items > 2",
        slice_value="true",
        column_name="num_0",
        window_start=_window(1),
    )
    x = sliced.num_0.to_numpy()
    assert (row["count"], row["num_nulls"]) == (len(x), 0)
    assert row["mean"] == pytest.approx(x.mean(), rel=1e-9)
    assert row["stddev"] == pytest.approx(x.std(ddof=1), rel=1e-9)
    assert (row["min"], row["max"]) == (x.min(), x.max())
    assert abs(row["distinct_count"] - len(np.unique(x))) <= 3 * drifted.cfg.distinct_rsd * len(x)
    ranks = np.searchsorted(np.sort(x), row["quantiles"], side="right") / len(x)
    levels = np.array([0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0])
    assert np.all(np.abs(ranks - levels) <= 1 / drifted.cfg.quantile_accuracy + 1 / len(x))


def test_quality_per_model_and_window_equals_sklearn(drifted: Monitored) -> None:
    df = _frame(drifted)
    labels = pd.DataFrame(drifted_labels(drifted))
    df = df.merge(labels, on=["request_id", "record_index"])
    for model in ("champion", "challenger"):
        part = df[(df.served_entity == model) & (df.w == 3)]
        (row,) = _rows(
            drifted.tables.profile,
            model_id=MODEL_ID[model],
            slice_key=None,
            column_name=":table",
            window_start=_window(3),
        )
        y, p = part.label.astype(str), part.prediction.astype(int).astype(str)
        assert row["labeled_count"] == len(part)
        assert row["accuracy"] == pytest.approx(skm.accuracy_score(y, p), abs=1e-12)
        assert row["precision"] == pytest.approx(skm.precision_score(y, p, pos_label="1"), abs=1e-12)
        assert row["recall"] == pytest.approx(skm.recall_score(y, p, pos_label="1"), abs=1e-12)
        assert row["f1"] == pytest.approx(skm.f1_score(y, p, pos_label="1"), abs=1e-12)
        assert row["roc_auc"] == pytest.approx(skm.roc_auc_score(part.label, part.probability), abs=1e-9)


def drifted_labels(m: Monitored) -> dict[str, Any]:
    from deltalake import DeltaTable

    assert m.cfg.labels_table is not None
    return DeltaTable(m.cfg.labels_table).to_pyarrow_table().to_pydict()


def test_evidently_reports_are_saved_and_referenced(drifted: Monitored) -> None:
    assert len(drifted.summary.reports) == 2
    for html in drifted.summary.reports:
        assert Path(html).stat().st_size > 10_000
        assert Path(html).with_suffix(".json").is_file()
    rows = [r for r in _rows(drifted.tables.drift) if r["evidently_report"] is not None]
    assert {r["model_id"] for r in rows} == set(MODEL_ID.values())
    assert {r["ws"] for r in rows} == {int(_window(WINDOWS - 1).timestamp())}
    assert all(r["drift_type"] == "baseline" and r["slice_key"] is None for r in rows)
    disagree = {
        (r["model_id"], r["column_name"])
        for r in rows
        if r["evidently_drift_detected"] != r["drift_detected"]
    }
    assert len(disagree) == len(drifted.summary.disagreements)
    drifted_cols = {r["column_name"] for r in rows if r["evidently_drift_detected"]}
    assert set(DRIFT_COLUMNS) <= drifted_cols


def test_a_metrics_table_from_an_older_version_gains_the_new_columns(spark: SparkSession, tmp_path: Path) -> None:
    from deltalake import DeltaTable

    from lakeserve.monitoring.metrics_tables import ddl_schema, merge_rows

    uri = str(tmp_path / "metrics")
    old, new = "k STRING NOT NULL, a DOUBLE", "k STRING NOT NULL, a DOUBLE, b STRING"
    merge_rows(spark, spark.createDataFrame([("x", 1.0)], ddl_schema(old)), uri, ["k"], old)
    merge_rows(spark, spark.createDataFrame([("y", 2.0, "new")], ddl_schema(new)), uri, ["k"], new)
    rows = sorted(DeltaTable(uri).to_pandas().to_dict("records"), key=lambda r: r["k"])
    assert [(r["k"], r["a"], r["b"]) for r in rows] == [("x", 1.0, None), ("y", 2.0, "new")]


def test_second_run_changes_nothing(spark: SparkSession, drifted: Monitored) -> None:
    from deltalake import DeltaTable

    def versions() -> list[int]:
        return [DeltaTable(u).version() for u in (drifted.tables.profile, drifted.tables.drift)]

    before = versions()
    again = run_monitor(spark, drifted.cfg, drifted.tables)
    assert again.windows_processed == 0
    assert versions() == before


def test_late_labels_and_new_windows_are_processed_incrementally(spark: SparkSession, tmp_path: Path) -> None:
    from deltalake import write_deltalake

    spec = SyntheticSpec(rows=3_000, windows=3, seed=5)
    table, labels = synthetic_inference(spec)
    write_deltalake(str(tmp_path / "payload"), table, partition_by=["date"])
    write_deltalake(str(tmp_path / "labels"), labels.slice(0, 1_000))
    cfg = MonitorSettings(
        granularities=["1 hour"],
        label_col="label",
        labels_table=str(tmp_path / "labels"),
        evidently=False,
        columns=["num_0", "cat_0", "prediction"],
    )
    tables = MonitorTables.beside(str(tmp_path / "payload"), cfg)
    first = run_monitor(spark, cfg, tables)
    assert first.windows_processed == 6
    write_deltalake(str(tmp_path / "labels"), labels.slice(1_000), mode="append")  # labels arrive later
    late = run_monitor(spark, cfg, tables)
    assert late.windows_processed == 4  # windows 1 and 2 of both models gained labels
    labeled = _rows(tables.profile, column_name=":table", slice_key=None)
    ok = table.filter(pa_ok(table)).num_rows
    assert sum(r["labeled_count"] for r in labeled) == ok
    later = SyntheticSpec(rows=1_000, windows=1, seed=6, start=spec.start + timedelta(hours=3))
    write_deltalake(
        str(tmp_path / "payload"), synthetic_inference(later)[0], mode="append", partition_by=["date"]
    )
    new = run_monitor(spark, cfg, tables)
    assert new.windows_processed == 2
    assert {f.window_start for f in new.flags} <= {spec.start + timedelta(hours=3)}


def pa_ok(table: Any) -> Any:
    import pyarrow.compute as pc

    return pc.equal(table["status_code"], 200)


def test_evidently_leaves_out_a_column_empty_on_one_side(tmp_path: Path) -> None:
    """An input one model does not take is all null in its windows; Evidently refuses such a column."""
    from lakeserve.monitoring.evidently_report import drift_report

    rng = np.random.default_rng(0)
    current = pd.DataFrame({"x": rng.normal(size=300), "extra": pd.Series([None] * 300, dtype=object)})
    reference = pd.DataFrame({"x": rng.normal(size=300), "extra": rng.choice(["a", "b"], 300)})
    report = drift_report(current, reference, ["x"], ["extra"], str(tmp_path / "report"))
    assert set(report.verdicts) == {"x"}
    assert Path(report.html_path).is_file()
