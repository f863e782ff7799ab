"""Cell atoms on real Spark: counts and means per cell, the bounds, and columns with no values."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest

from lakeserve.monitoring.drift_cells import cell_atoms, collect_errors, grid

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def test_atoms_keep_counts_and_sums_and_bound_what_they_lose(spark: SparkSession) -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=2_000)
    k = rng.integers(0, 3, size=2_000)  # three distinct values: every cell holds one
    df = spark.createDataFrame(
        [("a" if i % 2 else "b", float(a), int(b), None) for i, (a, b) in enumerate(zip(x, k, strict=True))],
        "side STRING, x DOUBLE, k BIGINT, empty DOUBLE",
    )
    edges = grid(df, ["x", "k", "empty"], cells=20, rows=2_000)
    assert edges["empty"] == [-np.inf, 0.0, np.inf]  # no values: still a valid grid
    assert len(edges["x"]) == 21  # 19 inner quantiles and the open ends
    atoms, errors = cell_atoms(df, ["x", "k", "empty"], ["side"], edges)
    rows = atoms.collect()
    assert {r.column_name for r in rows} == {"x", "k"}  # a column without values has no atoms
    for side, mask in (("a", np.arange(2_000) % 2 == 1), ("b", np.arange(2_000) % 2 == 0)):
        mine = [r for r in rows if r.side == side and r.column_name == "x"]
        assert sum(r["count"] for r in mine) == mask.sum()
        assert sum(r["count"] * r.value for r in mine) == pytest.approx(x[mask].sum())  # means keep sums
        assert all(r.lo <= r.value <= r.hi for r in mine)
    errs = collect_errors(errors, ["side"])
    for side in ("a", "b"):
        assert errs[(side, "k")].wasserstein == 0.0  # one distinct value per cell: nothing moves
        assert errs[(side, "k")].within_variance == 0.0
        assert 0.0 < errs[(side, "x")].wasserstein < 0.2  # continuous: about a cell's half-width
        assert errs[(side, "x")].binned
