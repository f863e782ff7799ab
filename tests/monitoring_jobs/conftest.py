"""Synthetic inference tables (real schema, written with delta-rs) and monitor runs over them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

import pyarrow as pa
import pytest

from lakeserve.jobs.monitor import MonitorSummary, MonitorTables, run_monitor
from lakeserve.monitoring.settings import MonitorSettings
from lakeserve.monitoring.synthetic import EntitySpec, SyntheticSpec, write_synthetic

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

DRIFT_COLUMNS = ("num_1", "cat_1")
DRIFT_FROM = 2
WINDOWS = 4


@dataclass
class Monitored:
    tables: MonitorTables
    cfg: MonitorSettings
    summary: MonitorSummary
    data: pa.Table
    labels: pa.Table | None = None


def _spec(rows: int, seed: int, drift: bool) -> SyntheticSpec:
    return SyntheticSpec(
        rows=rows,
        window=timedelta(hours=1),
        windows=WINDOWS,
        entities=[EntitySpec("champion", 0.7), EntitySpec("challenger", 0.3)],
        drift_columns=DRIFT_COLUMNS if drift else (),
        drift_from=DRIFT_FROM if drift else None,
        seed=seed,
    )


@pytest.fixture(scope="session")
def drifted(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Monitored:
    """12,000 rows over 4 hourly windows, num_1 and cat_1 drifted from window 2; a baseline; labels."""
    root = tmp_path_factory.mktemp("drifted")
    data = write_synthetic(str(root / "payload"), _spec(12_000, 1, drift=True), str(root / "labels"))
    write_synthetic(str(root / "baseline"), _spec(4_000, 2, drift=False))
    cfg = MonitorSettings(
        granularities=["1 hour"],
        label_col="label",
        labels_table=str(root / "labels"),
        prediction_proba_col="probability",
        positive_label="1",
        baseline_table=str(root / "baseline"),
        slicing_exprs=["n_items > 2"],
    )
    tables = MonitorTables.beside(str(root / "payload"), cfg)
    return Monitored(tables, cfg, run_monitor(spark, cfg, tables), data)


@pytest.fixture(scope="session")
def undrifted(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Monitored:
    root = tmp_path_factory.mktemp("undrifted")
    data = write_synthetic(str(root / "payload"), _spec(8_000, 3, drift=False))
    cfg = MonitorSettings(granularities=["1 hour"], evidently=False)
    tables = MonitorTables.beside(str(root / "payload"), cfg)
    return Monitored(tables, cfg, run_monitor(spark, cfg, tables), data)


@pytest.fixture(scope="session")
def binned(spark: SparkSession, drifted: Monitored) -> Monitored:
    """The drifted table again with every window and the baseline over ``drift_exact_max_rows``:
    binned statistics on a coarse grid (100 cells), so that their error bounds are visible."""
    update = {"drift_exact_max_rows": 100, "drift_cells": 100, "evidently": False, "output_prefix": "binned"}
    cfg = MonitorSettings.model_validate(drifted.cfg.model_dump() | update)
    tables = MonitorTables.beside(drifted.tables.inference, cfg)
    return Monitored(tables, cfg, run_monitor(spark, cfg, tables), drifted.data)
