"""The inference-table writer on real delta-rs tables: atomic rows + txn versions, schema growth."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from lakeserve.errors import ComponentError, ConfigError
from lakeserve.monitoring.delta_writer import (
    DeltaInferenceWriter,
    InferenceTableWriter,
    InMemoryInferenceWriter,
)
from lakeserve.monitoring.inference_log import app_id
from lakeserve.monitoring.inference_rows import to_arrow
from lakeserve.monitoring.table_schema import inference_schema, prediction_column_names
from lakeserve.scoring.records import Origin, RecordResult, RequestResult, ScoringRequest

SCHEMA = inference_schema({"amount": pa.float64()}, {"fraud_probability": pa.float64()})
GROUP = "scorers"


def _rows(offsets: range, partition: int = 0, schema: pa.Schema = SCHEMA) -> pa.Table:
    results = [
        RequestResult(
            request=ScoringRequest(
                request_id=f"p{partition}-o{offset}",
                body=b'{"dataframe_records": [{"amount": 1.0}]}',
                received_at=datetime(2025, 3, 1, 12, 0, offset % 60, tzinfo=UTC),
                origin=Origin("kafka", topic="requests", partition=partition, offset=offset),
            ),
            status_code=200,
            response_body=b'{"predictions": [0.5]}',
            records=[
                RecordResult(0, inputs={"amount": float(offset)}, prediction=0.5, served_entity="champion")
            ],
        )
        for offset in offsets
    ]
    return to_arrow(results, schema, "fraud-detection", 1.0, 1024)


def _table_rows(uri: str) -> pa.Table:
    return (
        DeltaTable(uri)
        .to_pyarrow_table()
        .sort_by([("kafka_partition", "ascending"), ("kafka_offset", "ascending")])
    )


def test_rows_and_transaction_versions_land_in_one_commit(tmp_path: Path) -> None:
    uri = str(tmp_path / "payload")
    writer = DeltaInferenceWriter(uri)
    writer.ensure(SCHEMA)
    p0 = app_id(GROUP, "requests", 0)

    assert writer.transaction_version(p0) is None
    writer.append(_rows(range(0, 5)), {p0: 4})
    writer.append(_rows(range(5, 8)), {p0: 7})

    assert writer.transaction_version(p0) == 7
    table = DeltaTable(uri)
    assert table.version() == 2  # create, then exactly one commit per append
    assert table.count() == 8
    assert table.metadata().partition_columns == ["date"]
    assert _table_rows(uri).column("kafka_offset").to_pylist() == list(range(8))


def test_two_partitions_keep_their_own_versions(tmp_path: Path) -> None:
    writer = DeltaInferenceWriter(str(tmp_path / "payload"))
    writer.ensure(SCHEMA)
    p0, p1 = app_id(GROUP, "requests", 0), app_id(GROUP, "requests", 1)

    writer.append(pa.concat_tables([_rows(range(3), 0), _rows(range(10, 12), 1)]), {p0: 2, p1: 11})
    writer.append(_rows(range(12, 13), 1), {p1: 12})

    assert (writer.transaction_version(p0), writer.transaction_version(p1)) == (2, 12)
    assert writer.transaction_version(app_id("other-group", "requests", 0)) is None


def test_a_new_writer_on_the_same_path_sees_the_versions_after_a_restart(tmp_path: Path) -> None:
    uri = str(tmp_path / "payload")
    before_crash = DeltaInferenceWriter(uri)
    before_crash.ensure(SCHEMA)
    before_crash.append(_rows(range(4)), {app_id(GROUP, "requests", 0): 3})

    after_restart = DeltaInferenceWriter(uri)
    after_restart.ensure(SCHEMA)  # idempotent on an existing table

    assert after_restart.transaction_version(app_id(GROUP, "requests", 0)) == 3
    assert DeltaTable(uri).count() == 4


def test_versions_without_rows_still_commit(tmp_path: Path) -> None:
    """Every row of a batch sampled out: the positions must still be recorded."""
    writer = DeltaInferenceWriter(str(tmp_path / "payload"))
    writer.ensure(SCHEMA)
    writer.append(SCHEMA.empty_table(), {app_id(GROUP, "requests", 0): 99})

    assert writer.transaction_version(app_id(GROUP, "requests", 0)) == 99


def test_timestamps_keep_the_table_at_reader_1_writer_2(tmp_path: Path) -> None:
    uri = str(tmp_path / "payload")
    writer = DeltaInferenceWriter(uri)
    writer.ensure(SCHEMA)
    writer.append(_rows(range(2)), {})

    protocol = DeltaTable(uri).protocol()
    assert (protocol.min_reader_version, protocol.min_writer_version) == (1, 2)
    assert DeltaTable(uri).to_pyarrow_table().schema.field("timestamp").type == pa.timestamp("us", tz="UTC")


def test_schema_grows_by_new_columns_and_old_rows_still_append(tmp_path: Path) -> None:
    uri = str(tmp_path / "payload")
    writer = DeltaInferenceWriter(uri)
    writer.ensure(SCHEMA)
    writer.append(_rows(range(2)), {})
    grown = inference_schema(
        {"amount": pa.float64(), "merchant_risk": pa.float64()}, {"fraud_probability": pa.float64()}
    )

    table_schema = writer.ensure(grown)
    writer.append(_rows(range(2, 3)), {})  # an endpoint still on the old schema
    writer.append(_rows(range(3, 4), schema=grown), {})

    assert table_schema.names[-1] == "merchant_risk"
    assert prediction_column_names(table_schema) == ["fraud_probability"]  # roles survive in Delta
    assert _table_rows(uri).column("merchant_risk").to_pylist() == [None] * 4


def test_a_retype_is_refused_and_the_table_is_unchanged(tmp_path: Path) -> None:
    uri = str(tmp_path / "payload")
    writer = DeltaInferenceWriter(uri)
    writer.ensure(SCHEMA)
    retyped = inference_schema({"amount": pa.string()}, {"fraud_probability": pa.float64()})

    with pytest.raises(ConfigError, match="'amount' is double in the table but string"):
        writer.ensure(retyped)
    assert DeltaTable(uri).version() == 0


def test_rows_with_a_column_the_table_lacks_are_refused(tmp_path: Path) -> None:
    writer = DeltaInferenceWriter(str(tmp_path / "payload"))
    writer.ensure(SCHEMA)
    wider = inference_schema({"amount": pa.float64(), "new": pa.int64()}, {"fraud_probability": pa.float64()})

    with pytest.raises(ConfigError, match="call ensure"):
        writer.append(_rows(range(1), schema=wider), {})


def test_delta_failures_arrive_as_component_errors(tmp_path: Path) -> None:
    (tmp_path / "not-a-dir").write_text("a file where the table should go")
    writer = DeltaInferenceWriter(str(tmp_path / "not-a-dir" / "payload"))

    with pytest.raises(ComponentError, match="delta: could not prepare"):
        writer.ensure(SCHEMA)


def test_app_id_format() -> None:
    assert app_id("team/scorers", "fraud-requests", 3) == "lakeserve/kafka/team/scorers/fraud-requests/3"
    assert app_id("team/scorers", "fraud-requests", 3).rsplit("/", 2)[1:] == ["fraud-requests", "3"]
    with_id = app_id("team/scorers", "fraud-requests", 3, "9f3c")
    assert with_id == "lakeserve/kafka/team/scorers/fraud-requests#9f3c/3"
    assert with_id.rsplit("/", 2)[1].split("#") == ["fraud-requests", "9f3c"]
    with pytest.raises(ConfigError):
        app_id("g", "bad/topic", 0)
    with pytest.raises(ConfigError):
        app_id("", "t", 0)


def test_the_in_memory_writer_behaves_like_the_delta_one() -> None:
    writer: InferenceTableWriter = InMemoryInferenceWriter()
    writer.ensure(SCHEMA)
    p0 = app_id(GROUP, "requests", 0)
    writer.append(_rows(range(3)), {p0: 2})
    writer.append(SCHEMA.empty_table(), {p0: 5})

    assert writer.transaction_version(p0) == 5
    assert isinstance(writer, InMemoryInferenceWriter)
    assert writer.rows().num_rows == 3
    with pytest.raises(ConfigError):
        writer.ensure(inference_schema({"amount": pa.int64()}, {}))


def test_delta_table_reads_back_through_spark(tmp_path: Path, spark: object) -> None:
    from pyspark.sql import SparkSession

    assert isinstance(spark, SparkSession)
    uri = str(tmp_path / "payload")
    writer = DeltaInferenceWriter(uri)
    writer.ensure(SCHEMA)
    writer.append(_rows(range(3)), {app_id(GROUP, "requests", 0): 2})

    df = spark.read.format("delta").load(uri)
    got = df.orderBy("kafka_offset").select("request_id", "amount", "request_metadata", "date").collect()
    assert [r["amount"] for r in got] == [0.0, 1.0, 2.0]
    assert got[0]["request_metadata"]["endpoint_name"] == "fraud-detection"
    assert str(got[0]["date"]) == "2025-03-01"
