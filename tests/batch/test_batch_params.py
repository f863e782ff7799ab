"""The batch job's ``--params`` on Spark: one params object reaches every model call of the run
(``ThresholdModel``'s ``threshold`` changes the written predictions), the same model and rows
without params keep its default."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd
from conftest_helpers import GOOD, register_model, serving
from deltalake import DeltaTable, write_deltalake

from lakeserve.jobs.batch_score import BatchOptions, run_batch_score
from lakeserve.scoring.testing_models import THRESHOLD_PARAMS, ThresholdModel
from lakeserve.settings import Settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

# the v1 features, carried by the input itself (features_from_input)
FEATURES = {"customer_age": 30, "account_age_days": 100, "avg_amount_30d": 20.0, "txn_count_7d": 3,
            "chargeback_rate": 0.01}  # fmt: skip


def test_the_runs_params_change_every_rows_prediction(
    stack: Settings, demo_assets: object, spark: SparkSession
) -> None:
    version = register_model(stack, ThresholdModel(), "threshold_batch", params=THRESHOLD_PARAMS)
    settings = serving(stack, "threshold_batch", version)
    # amounts 12.5 and 20 score probabilities of about 0.08 and 0.12: 0 at the default 0.5, 1 at 0.05
    rows = pd.DataFrame([{**GOOD, **FEATURES, "customer_id": i, "amount": a} for i, a in enumerate([12.5, 20.0, 12.5])])
    rows["event_timestamp"] = pd.Timestamp.now(tz="UTC")
    write_deltalake(stack.table_uri("batch_params_input"), rows, mode="overwrite")

    outputs = {}
    for name, params in [("default", {}), ("low", {"threshold": 0.05})]:
        options = BatchOptions(features_from_input=True, params=params)
        report = run_batch_score(spark, settings, "batch_params_input", f"batch_params_{name}", options)
        assert report.by_status == {200: 3}
        outputs[name] = DeltaTable(stack.table_uri(f"batch_params_{name}")).to_pandas().sort_values("customer_id")
    assert outputs["default"]["prediction"].tolist() == [0, 0, 0]
    assert outputs["low"]["prediction"].tolist() == [1, 1, 1]
    assert outputs["low"]["probability"].tolist() == outputs["default"]["probability"].tolist()
