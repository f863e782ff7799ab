"""Which windows are compared with which, and the drift rows that come out.

A *pair* is a target window of one model and slice against a reference: the previous
window of the same granularity (``consecutive``) or the baseline table (``baseline``).
Numeric pairs are reduced in Spark (:func:`~lakeserve.monitoring.drift.numeric_pair_stats`);
categorical pairs from collected per-value counts.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from lakeserve.monitoring.drift import categorical_drift, numeric_drift, numeric_pair_stats
from lakeserve.monitoring.drift_cells import EXACT, SideError
from lakeserve.monitoring.metrics_tables import WindowKey
from lakeserve.monitoring.settings import MonitorSettings
from lakeserve.monitoring.windows import Granularity, shift_start

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, Row, SparkSession


WS = "__ls_ws"  # window start in epoch seconds
SLICE = ["slice_key", "slice_value"]
CUR_KEYS = ["granularity", WS, "model_id", *SLICE, "column_name"]
PAIR_KEYS = ["drift_type", *CUR_KEYS]
CELL_COLUMNS = ("cell", "lo", "hi")  # binned sides only (drift_cells.cell_atoms)
SliceCounts = dict[tuple[Any, ...], dict[str, int]]


@dataclass(frozen=True, slots=True)
class WindowPlan:
    """``changed``: windows to profile; ``targets``: windows whose drift is recomputed;
    ``previous``: target → the window before it, when that one has rows."""

    changed: frozenset[WindowKey]
    targets: frozenset[WindowKey]
    previous: Mapping[WindowKey, WindowKey]

    @property
    def needed(self) -> frozenset[WindowKey]:
        return self.targets | frozenset(self.previous.values())


def plan_windows(
    present: Iterable[WindowKey], changed: Iterable[WindowKey], grans: Mapping[str, Granularity]
) -> WindowPlan:
    """A changed window also changes the consecutive drift of the window after it."""
    present_set, changed_set = set(present), set(changed)

    def step(k: WindowKey, n: int) -> WindowKey:
        start = datetime.fromtimestamp(k[1], UTC)
        return (k[0], int(shift_start(grans[k[0]], start, n).timestamp()), k[2])

    targets = changed_set | {step(k, 1) for k in changed_set if step(k, 1) in present_set}
    previous = {t: step(t, -1) for t in targets if step(t, -1) in present_set}
    return WindowPlan(frozenset(changed_set), frozenset(targets), previous)


@dataclass(frozen=True, slots=True)
class SideErrors:
    """Errors of the binned sides (:mod:`~lakeserve.monitoring.drift_cells`); a side not here is exact.

    ``windows`` is keyed by ``CUR_KEYS``, ``baseline`` by (model_id or None, slice_key,
    slice_value, column_name)."""

    windows: Mapping[tuple[Any, ...], SideError] = field(default_factory=dict)
    baseline: Mapping[tuple[Any, ...], SideError] = field(default_factory=dict)

    def of_pair(self, key: tuple[Any, ...], plan: WindowPlan) -> tuple[SideError, SideError]:
        """(current side, reference side) of a pair keyed by ``PAIR_KEYS``."""
        drift_type, *cur = key
        current = self.windows.get(tuple(cur), EXACT)
        if drift_type == "consecutive":
            prev = plan.previous[(cur[0], cur[1], cur[2])]
            return current, self.windows.get((*prev, *cur[3:]), EXACT)
        rest = tuple(cur[3:])
        return current, self.baseline.get((cur[2], *rest)) or self.baseline.get((None, *rest), EXACT)


def keys_frame(spark: SparkSession, keys: Iterable[WindowKey]) -> DataFrame:
    return spark.createDataFrame(list(keys), f"granularity STRING, {WS} BIGINT, model_id STRING")


def numeric_pairs(
    spark: SparkSession, counts: DataFrame, plan: WindowPlan, baseline: DataFrame | None, bins: int
) -> tuple[list[dict[str, Any]], list[Row]]:
    """``counts``: (CUR_KEYS, value, count [, cell, lo, hi]) of the needed windows; ``baseline``:
    (slice, column, value, count [, model_id] [, cell, lo, hi]). Returns the collected stats and
    PSI bins of every pair."""
    from pyspark.sql import functions as sf

    cells = [c for c in CELL_COLUMNS if c in counts.columns]
    targets = sf.broadcast(keys_frame(spark, plan.targets))
    cur = counts.join(targets, ["granularity", WS, "model_id"]).select(
        *CUR_KEYS, "value", *cells, sf.col("count").alias("cur_cnt"), sf.lit(0).cast("bigint").alias("ref_cnt")
    )
    prev = spark.createDataFrame(
        [(*p, t[1]) for t, p in plan.previous.items()],
        f"granularity STRING, {WS} BIGINT, model_id STRING, t BIGINT",
    )
    ref = counts.join(sf.broadcast(prev), ["granularity", WS, "model_id"]).withColumn(WS, sf.col("t"))
    parts = [
        cur.withColumn("drift_type", sf.lit("consecutive")),
        _as_ref(ref, "consecutive", cells),
    ]
    if baseline is not None:
        parts.append(cur.withColumn("drift_type", sf.lit("baseline")))
        on = ["model_id"] if "model_id" in baseline.columns else []
        joined = baseline.join(targets, on) if on else baseline.crossJoin(targets)
        parts.append(_as_ref(joined, "baseline", cells))
    pairs = parts[0]
    for p in parts[1:]:
        pairs = pairs.unionByName(p)
    return numeric_pair_stats(pairs, PAIR_KEYS, bins)


def _as_ref(df: DataFrame, drift_type: str, cells: Sequence[str]) -> DataFrame:
    from pyspark.sql import functions as sf

    return df.select(
        *CUR_KEYS,
        "value",
        *cells,
        sf.lit(0).cast("bigint").alias("cur_cnt"),
        sf.col("count").alias("ref_cnt"),
        sf.lit(drift_type).alias("drift_type"),
    )


def numeric_rows(
    stats: list[dict[str, Any]], binned: list[Row], cfg: MonitorSettings, plan: WindowPlan, errors: SideErrors
) -> list[dict[str, Any]]:
    """Turn the collected stats of each pair (and its PSI bins) into drift-table rows; binned pairs
    carry their KS bound and the sum of both sides' Wasserstein bounds."""
    bins: dict[tuple[Any, ...], tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
    for b in sorted(binned, key=lambda b: int(b.bin)):
        c, rf = bins[tuple(b[k] for k in PAIR_KEYS)]
        c.append(float(b.c))
        rf.append(float(b.r))
    rows = []
    for r in stats:
        key = tuple(r[k] for k in PAIR_KEYS)
        cur_err, ref_err = errors.of_pair(key, plan)
        ref_std = math.sqrt(float(r["ref_std"]) ** 2 + ref_err.within_variance)
        n_cur, n_ref = int(r["n_cur"]), int(r["n_ref"])
        d = numeric_drift(float(r["ks"]), float(r["wasserstein"]), n_cur, n_ref, ref_std, bins[key])
        enough = min(n_cur, n_ref) >= cfg.min_rows
        detected = enough and d.ks_pvalue < cfg.drift_p_value and (
            d.population_stability_index >= cfg.psi_threshold
            or d.wasserstein_normed >= cfg.wasserstein_threshold
        )
        rows.append(
            {
                **dict(zip(PAIR_KEYS, key, strict=True)),
                "column_type": "numeric",
                "count": n_cur,
                "reference_count": n_ref,
                "ks_statistic": d.ks_statistic,
                "ks_pvalue": d.ks_pvalue,
                "wasserstein_distance": d.wasserstein_distance,
                "wasserstein_normed": d.wasserstein_normed,
                "population_stability_index": d.population_stability_index,
                "statistics_method": "binned" if cur_err.binned or ref_err.binned else "exact",
                "ks_error_bound": float(r["ks_bound"]),
                "wasserstein_error_bound": cur_err.wasserstein + ref_err.wasserstein,
                "drift_detected": detected,
            }
        )
    return rows


def collect_counts(long: DataFrame, keys: Sequence[str]) -> SliceCounts:
    """{(keys...): {value: count}} of the non-null values of a (keys, value) frame."""
    from pyspark.sql import functions as sf

    out: SliceCounts = defaultdict(dict)
    for r in long.where(sf.col("value").isNotNull()).groupBy(*keys, "value").count().collect():
        out[tuple(r[k] for k in keys)][str(r.value)] = int(r["count"])
    return out


def categorical_rows(
    current: SliceCounts, plan: WindowPlan, baseline: SliceCounts | None, cfg: MonitorSettings
) -> list[dict[str, Any]]:
    """Drift rows of every categorical pair; ``current`` keyed by CUR_KEYS, ``baseline`` by
    (model_id or None, slice_key, slice_value, column_name)."""
    rows = []
    for key, counts in current.items():
        window: WindowKey = (key[0], key[1], key[2])
        if window not in plan.targets:
            continue
        refs: list[tuple[str, dict[str, int] | None]] = []
        if window in plan.previous:
            p = plan.previous[window]
            refs.append(("consecutive", current.get((*p, *key[3:]))))
        if baseline is not None:
            refs.append(("baseline", baseline.get((key[2], *key[3:])) or baseline.get((None, *key[3:]))))
        rows += [_categorical_row(key, t, counts, ref, cfg) for t, ref in refs if ref]
    return rows


def _categorical_row(
    key: tuple[Any, ...], drift_type: str, cur: dict[str, int], ref: dict[str, int], cfg: MonitorSettings
) -> dict[str, Any]:
    d = categorical_drift(cur, ref)
    enough = min(sum(cur.values()), sum(ref.values())) >= cfg.min_rows
    detected = enough and d.chi_squared_pvalue < cfg.drift_p_value and (
        d.population_stability_index >= cfg.psi_threshold or d.js_distance >= cfg.js_threshold
    )
    return {
        **dict(zip(CUR_KEYS, key, strict=True)),
        "drift_type": drift_type,
        "column_type": "categorical",
        "count": sum(cur.values()),
        "reference_count": sum(ref.values()),
        "chi_squared_statistic": d.chi_squared_statistic,
        "chi_squared_pvalue": d.chi_squared_pvalue,
        "tv_distance": d.tv_distance,
        "l_infinity_distance": d.l_infinity_distance,
        "js_distance": d.js_distance,
        "population_stability_index": d.population_stability_index,
        "statistics_method": "exact",
        "drift_detected": detected,
    }
