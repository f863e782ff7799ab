"""Binned numeric drift for large runs: each side reduced to a few atoms per grid cell, with bounds.

Sorting every distinct value (the exact path of :func:`~lakeserve.monitoring.drift.numeric_pair_stats`)
does not scale: 10 M rows x 20 columns is ~160 M distinct values to sort. When a run's largest
window (or the baseline) has more than ``monitor.drift_exact_max_rows`` rows, every side of the
run is reduced first, on one grid per column:

* the **grid**: ``drift_cells`` cells whose edges are quantiles of a sample of the values
  compared (each cell holds about ``1/drift_cells`` of them); the outer cells are open;
* per side and cell (one hash aggregation, no sort): count, mean, min, max and population
  variance.

From these, per pair (``F`` the empirical CDF of a side's values):

* **KS** is evaluated at the cell ends, where both CDFs are known exactly: ``D_cells <= D``, and
  ``D - D_cells`` is at most the largest share (of either side) of a cell that holds two or
  more distinct values. ``D_cells`` is the binned KS test, which is conservative: its p-value
  never overstates significance. The bound is stored as ``ks_error_bound``.
* **Wasserstein** is computed on atoms at each side's cell means ``F'``. Moving each value to
  its cell mean is a transport plan, so ``W(F, F') <= Σ share_b · E|v - mean_b| <=
  Σ share_b · min(range_b / 2, sd_b)``; by the triangle inequality ``|W' - W|`` is at most the
  sum of both sides' figures, stored as ``wasserstein_error_bound``.
* The reference standard deviation (for normed Wasserstein) is exact: the atoms' variance plus
  the within-cell variance they lose.
* PSI takes its reference deciles at cell ends (no bound is claimed; with 2,000 cells a decile
  edge moves by at most one cell, 0.05 % of the values).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

CELL = "__ls_cell"
SAMPLE_ROWS = 200_000


@dataclass(frozen=True, slots=True)
class SideError:
    """What one side's atoms lose (zero for an exact side)."""

    wasserstein: float = 0.0  # bound on W(F, F')
    within_variance: float = 0.0  # Σ n_b var_b / n: the variance the atoms do not carry
    binned: bool = False


EXACT = SideError()


def grid(df: DataFrame, columns: Sequence[str], cells: int, rows: int) -> dict[str, list[float]]:
    """Cell edges per column: quantiles of a sample of ``df`` (``rows`` rows in it), deduplicated.

    The outer cells are open (``-inf``, ``+inf``), so every value falls in one cell whatever
    the sample missed.
    """
    from pyspark.sql import functions as sf

    fraction = min(1.0, SAMPLE_ROWS / max(rows, 1))
    sample = df.sample(fraction=fraction, seed=17) if fraction < 1.0 else df
    levels = sf.array(*[sf.lit(i / cells) for i in range(1, cells)])
    accuracy = max(10_000, 10 * cells)
    aggs = [sf.percentile_approx(sf.col(f"`{c}`").cast("double"), levels, accuracy).alias(c) for c in columns]
    row = sample.agg(*aggs).first()
    edges: dict[str, list[float]] = {}
    for c in columns:
        inner = sorted({float(q) for q in (row[c] if row is not None and row[c] else []) if q == q})
        edges[c] = [-float("inf"), *(inner or [0.0]), float("inf")]  # Bucketizer wants 3 edges or more
    return edges


def cell_atoms(
    df: DataFrame, columns: Sequence[str], keys: Sequence[str], edges: Mapping[str, Sequence[float]]
) -> tuple[DataFrame, DataFrame]:
    """Atoms and per-side errors of the numeric ``columns`` of ``df``, grouped by ``keys``.

    Returns ``(atoms, errors)``: ``atoms`` is (keys, column_name, value, count, cell, lo, hi),
    one row per non-empty cell at the cell's mean; ``errors`` is (keys, column_name,
    wasserstein, within_variance), one row per side and column (see :class:`SideError`).
    """
    from pyspark.ml.feature import Bucketizer
    from pyspark.sql import functions as sf

    cell_cols = [f"{CELL}{i}" for i in range(len(columns))]
    values = df.select(
        *keys,
        *[
            sf.when(sf.isnan(sf.col(f"`{c}`").cast("double")), None)
            .otherwise(sf.col(f"`{c}`").cast("double"))
            .alias(f"__ls_v{i}")
            for i, c in enumerate(columns)
        ],
    )
    bucketizer = Bucketizer(
        splitsArray=[list(edges[c]) for c in columns],
        inputCols=[f"__ls_v{i}" for i in range(len(columns))],
        outputCols=cell_cols,
        handleInvalid="keep",
    )
    long = bucketizer.transform(values).select(
        *keys,
        sf.inline(
            sf.array(
                *[
                    sf.struct(
                        sf.lit(c).alias("column_name"),
                        sf.col(f"__ls_v{i}").alias("value"),
                        sf.col(cell_cols[i]).cast("int").alias("cell"),
                    )
                    for i, c in enumerate(columns)
                ]
            )
        ),
    )
    per_cell = (
        long.where(sf.col("value").isNotNull())
        .groupBy(*keys, "column_name", "cell")
        .agg(
            sf.count(sf.lit(1)).alias("n"),
            sf.avg("value").alias("mean"),
            sf.min("value").alias("lo"),
            sf.max("value").alias("hi"),
            sf.var_pop("value").alias("var"),
        )
        .localCheckpoint()  # small; read twice (atoms, errors); freed with the frame
    )
    atoms = per_cell.select(
        *keys, "column_name", sf.col("mean").alias("value"), sf.col("n").alias("count"), "cell", "lo", "hi"
    )
    spread = sf.least((sf.col("hi") - sf.col("lo")) / 2, sf.sqrt(sf.col("var")))
    errors = per_cell.groupBy(*keys, "column_name").agg(
        (sf.sum(sf.col("n") * spread) / sf.sum("n")).alias("wasserstein"),
        (sf.sum(sf.col("n") * sf.col("var")) / sf.sum("n")).alias("within_variance"),
    )
    return atoms, errors


def collect_errors(errors: DataFrame, keys: Sequence[str]) -> dict[tuple[Any, ...], SideError]:
    """{(keys..., column_name): SideError} of an ``errors`` frame from :func:`cell_atoms`."""
    return {
        tuple(r[k] for k in (*keys, "column_name")): SideError(
            float(r.wasserstein), float(r.within_variance), binned=True
        )
        for r in errors.collect()
    }
