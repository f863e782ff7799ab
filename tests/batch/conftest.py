"""The session's parity run: the stream's answers for a few requests, a Delta table of customer
features with a second, later snapshot, and one batch run over the same rows."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pytest
from batch_helpers import LATER, ParityRun, extra_rows, later_snapshot, stream_inputs
from deltalake import DeltaTable, write_deltalake

from lakeserve.features import demo_repo
from lakeserve.jobs.batch_score import BatchOptions, run_batch_score
from lakeserve.jobs.demo_data import request_bodies
from lakeserve.settings import Settings

# The stream tests' helpers (in-process worker, produce, answers), used as they use them.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pipelines"))
from conftest_helpers import answers_for, produce, running, settings_for, table_rows

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from lakeserve.jobs.demo import DemoReport


@pytest.fixture(scope="session")
def parity_run(stack: Settings, demo_assets: DemoReport, spark: SparkSession) -> ParityRun:
    """Stream 40 requests through a worker, then batch-score the same rows and a few more."""
    assert demo_assets.data_dir is not None
    customers = pd.read_parquet(demo_assets.data_dir / "customers.parquet")
    stream_settings = settings_for(stack, "batch-parity")
    bodies = request_bodies(customers.head(30), 40, seed=21, prefix="parity")
    with running(stream_settings) as worker:
        produce(stream_settings, bodies)
        answers_for(stream_settings, len(bodies))
        worker.loop.flush()
    stream = table_rows(stream_settings)
    now = datetime.now(UTC)
    later = later_snapshot(customers, now + LATER)
    features = stack.table_uri("batch_parity_customer_stats")  # its own: the later snapshot stays here
    write_deltalake(features, pd.concat([customers, later], ignore_index=True), mode="overwrite")
    inputs = pd.concat([stream_inputs(stream), extra_rows(stream, now)], ignore_index=True)
    write_deltalake(stack.table_uri("batch_parity_input"), inputs, mode="overwrite")
    options = BatchOptions(feature_tables={demo_repo.FEATURE_VIEW: features})
    report = run_batch_score(spark, stack, "batch_parity_input", "batch_parity_output", options)
    batch = DeltaTable(stack.table_uri("batch_parity_output")).to_pandas()
    return ParityRun(stream, batch, report, customers, later, now)
