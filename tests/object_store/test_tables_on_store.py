"""An endpoint whose tables live on a real S3-compatible store (SeaweedFS): the stream and REST
log there exactly once, a model whose artifacts MLflow keeps on the store serves, and the monitor,
A/B and batch jobs read and write their tables and reports there through Spark's S3A."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx
import pandas as pd
import pytest
from conftest_helpers import Answer, answers_for, produce, running, settings_for
from conftest_helpers import serving as serving_model
from deltalake import DeltaTable, write_deltalake
from http_helpers import http_settings_for
from http_helpers import serving as serving_rest
from registered_models import GOOD, register_model
from store_helpers import BUCKET, on_store, read_object, store_files

from lakeserve.features import demo_repo
from lakeserve.jobs import ab_analysis, monitor
from lakeserve.jobs.batch_score import BatchOptions, run_batch_score
from lakeserve.jobs.demo_data import REQUEST_FIELDS, request_bodies
from lakeserve.jobs.spark import spark_session
from lakeserve.pipelines.embedded.seaweedfs import SeaweedS3
from lakeserve.scoring.testing_models import ThresholdModel
from lakeserve.settings import Settings, artifact_store_env

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from lakeserve.jobs.demo import DemoReport

REQUESTS = 300


@dataclass
class Streamed:
    settings: Settings
    answers: dict[str, Answer]
    rows: pd.DataFrame
    customers: pd.DataFrame


def delta_rows(settings: Settings, uri: str) -> pd.DataFrame:
    return DeltaTable(uri, storage_options=settings.tables.delta_storage_options()).to_pandas()


@pytest.fixture(scope="module")
def streamed(stack: Settings, demo_assets: DemoReport, object_store: SeaweedS3) -> Streamed:
    """The demo endpoint (champion and challenger) fed 300 requests through Kafka, its table on the store."""
    assert demo_assets.data_dir is not None
    settings = on_store(settings_for(stack, "on-store"), object_store, "stream")
    customers = pd.read_parquet(demo_assets.data_dir / "customers.parquet")
    bodies = request_bodies(customers.head(120), REQUESTS, seed=31, records_per_request=1, prefix="s3")
    with running(settings) as worker:
        produce(settings, bodies)
        answers = answers_for(settings, len(bodies))
        worker.loop.flush()
    return Streamed(settings, answers, delta_rows(settings, settings.inference_table_uri), customers)


def test_the_stream_logs_every_record_once_on_the_store(streamed: Streamed, object_store: SeaweedS3) -> None:
    assert len(streamed.answers) == REQUESTS
    assert all(a.headers["status"] == "200" for a in streamed.answers.values())
    rows = streamed.rows
    assert rows.groupby("request_id").size().eq(1).all()  # each record once ...
    assert set(rows["request_id"]) == set(streamed.answers)  # ... and every one
    assert set(rows["served_entity"]) == {"champion", "challenger"}
    # the table is on the store, read by a plain S3 client too; nothing of it on the local disk
    files = store_files(object_store, "stream/")
    assert any(f.endswith("_delta_log/00000000000000000000.json") for f in files)
    assert any(f.endswith(".parquet") for f in files)
    table_path = streamed.settings.inference_table_uri.split(f"s3://{BUCKET}/", 1)[1]
    assert not (streamed.settings.stack.state_dir / "tables" / table_path).exists()


def test_rest_serves_a_model_kept_on_the_store_and_logs_there(
    stack: Settings, demo_assets: DemoReport, object_store: SeaweedS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    base = on_store(http_settings_for(stack, "rest-on-store"), object_store, "rest")
    base = base.model_copy(update={"mlflow": base.mlflow.model_copy(update={"artifact_root": f"s3://{BUCKET}/mlflow"})})
    for name, value in artifact_store_env(base).items():  # as the CLI sets them
        monkeypatch.setenv(name, value)
    mlflow.set_tracking_uri(base.mlflow.tracking_uri)
    client = mlflow.MlflowClient()
    found = client.get_experiment_by_name("on-store")
    experiment = found.experiment_id if found else client.create_experiment("on-store", f"s3://{BUCKET}/mlflow")
    version = register_model(base, ThresholdModel(), "threshold_on_store", experiment_id=experiment)
    assert any(f.endswith("MLmodel") for f in store_files(object_store, "mlflow/"))  # the model is on the store

    settings = serving_model(base, "threshold_on_store", version)
    with serving_rest(settings) as server:
        answer = httpx.post(server.invocations, json={"dataframe_records": [GOOD, {**GOOD, "amount": 5000.0}]})
        assert answer.status_code == 200, answer.text
        assert [p["prediction"] for p in answer.json()["predictions"]] == [0, 1]
    rows = delta_rows(settings, settings.inference_table_uri)  # the server flushed its rows as it stopped
    assert len(rows) == 2
    assert (rows["served_entity"] == "threshold_on_store").all()
    assert (rows["transport"] == "http").all()


def test_monitor_and_ab_jobs_write_their_tables_and_reports_on_the_store(
    streamed: Streamed, spark: SparkSession, object_store: SeaweedS3
) -> None:
    settings = streamed.settings
    outcome = monitor.run_from_settings(settings)
    assert outcome.facts["windows_processed"] >= 1
    tables = monitor.MonitorTables.beside(settings.inference_table_uri, settings.monitor)
    profile = delta_rows(settings, tables.profile)
    assert set(profile["column_name"]) >= {"amount", ":table"}
    whole = profile[(profile.column_name == ":table") & profile.slice_key.isna()]
    assert int(whole["count"].sum()) == REQUESTS  # every streamed record profiled, once

    ab = ab_analysis.run_from_settings(settings)
    assert ab.facts["control"] == "champion"
    output, markdown = ab_analysis.output_locations(settings)
    results = delta_rows(settings, output)
    assert "challenger" in set(results["treatment"])  # the comparisons, read back from the store
    assert set(results["control"]) == {"champion"}
    readout = read_object(object_store, markdown.split(f"s3://{BUCKET}/", 1)[1])
    assert "challenger" in readout
    assert "champion" in readout


def test_batch_scoring_reads_and_writes_the_store_as_the_stream_scored(
    streamed: Streamed, spark: SparkSession
) -> None:
    settings = streamed.settings
    options = settings.tables.delta_storage_options()
    features = settings.table_uri("on_store_customer_stats")
    write_deltalake(features, streamed.customers, mode="overwrite", storage_options=options)
    stream = streamed.rows
    inputs = stream[["client_request_id", *REQUEST_FIELDS, "timestamp"]]
    inputs = inputs.rename(columns={"timestamp": "event_timestamp"})
    inputs = inputs.astype({"customer_id": "int64", "hour_of_day": "int64", "is_online": "int64"})
    write_deltalake(settings.table_uri("on_store_batch_input"), inputs, mode="overwrite", storage_options=options)

    session = spark_session(settings.spark, tables=settings.tables)  # the session's S3A settings for this bucket
    report = run_batch_score(session, settings, "on_store_batch_input", "on_store_batch_output",
                             BatchOptions(feature_tables={demo_repo.FEATURE_VIEW: features}))  # fmt: skip
    assert report.rows == REQUESTS
    assert report.failed == 0
    batch = delta_rows(settings, settings.table_uri("on_store_batch_output")).set_index("client_request_id")
    by_request = stream.set_index("client_request_id").loc[batch.index]
    assert (batch["prediction"].astype("int64") == by_request["prediction"].astype("int64")).all()
    assert (batch["served_entity"] == by_request["served_entity"]).all()
