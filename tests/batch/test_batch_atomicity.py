"""A batch run that fails mid-way commits nothing: the output table keeps its version and rows."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pytest
from batch_helpers import ParityRun
from deltalake import DeltaTable, write_deltalake

from lakeserve.jobs.batch_score import BatchFailed, BatchOptions, run_batch_score
from lakeserve.settings import Settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def _files(uri: str) -> set[str]:
    return {p.name for p in Path(uri).glob("*.parquet")}


def test_failed_run_leaves_the_output_unchanged(parity_run: ParityRun, spark: SparkSession, stack: Settings) -> None:
    output = stack.table_uri("batch_parity_output")  # committed by the parity run
    before_version = DeltaTable(output).version()
    before_rows = DeltaTable(output).to_pandas()
    before_files = _files(output)
    # four input files, the poison row (no amount) in the last: the first tasks finish and
    # write their files before the last one fails the job
    good = parity_run.batch[parity_run.batch.status_code == 200].head(40)
    inputs = good[list(before_rows.columns[: before_rows.columns.get_loc("served_entity")])]
    ints = {c: "int64" for c in ["customer_age", "account_age_days", "txn_count_7d"]}  # null in failed rows
    inputs = inputs.astype(ints).reset_index(drop=True)
    inputs.loc[inputs.index[-1], "amount"] = None
    uri = stack.table_uri("batch_failing_input")
    for i, part in enumerate([inputs.iloc[k * 10 : (k + 1) * 10] for k in range(4)]):
        write_deltalake(uri, part, mode="overwrite" if i == 0 else "append")

    options = BatchOptions(features_from_input=True, fail_on_error=True)
    with pytest.raises(BatchFailed, match="nothing was committed") as failed:
        run_batch_score(spark, stack, uri, output, options)

    assert "amount" in str(failed.value)
    after = DeltaTable(output)
    assert after.version() == before_version
    pd.testing.assert_frame_equal(after.to_pandas(), before_rows)
    assert _files(output) - before_files, "the failing run wrote no data files before it failed"
