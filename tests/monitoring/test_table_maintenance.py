"""Maintenance on a real delta-rs table: many small appends → fewer files, same data."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from lakeserve.errors import ComponentError, ConfigError
from lakeserve.monitoring.delta_writer import DeltaInferenceWriter
from lakeserve.monitoring.inference_log import app_id
from lakeserve.monitoring.inference_rows import to_arrow
from lakeserve.monitoring.table_maintenance import optimize_table
from lakeserve.monitoring.table_schema import inference_schema
from lakeserve.scoring.records import Origin, RecordResult, RequestResult, ScoringRequest

SCHEMA = inference_schema({"amount": pa.float64()}, {"fraud_probability": pa.float64()})


def _batch(offset: int) -> pa.Table:
    result = RequestResult(
        request=ScoringRequest(
            request_id=f"r{offset}",
            body=b"{}",
            received_at=datetime(2025, 3, 1 + offset % 2, 9, 0, tzinfo=UTC),  # two date partitions
            origin=Origin("kafka", topic="requests", partition=0, offset=offset),
        ),
        status_code=200,
        response_body=b"{}",
        records=[RecordResult(0, inputs={"amount": float(offset)}, prediction=0.25)],
    )
    return to_arrow([result], SCHEMA, "fraud-detection", 1.0, 1024)


def _small_appends(uri: str, n: int) -> None:
    writer = DeltaInferenceWriter(uri)
    writer.ensure(SCHEMA)
    for offset in range(n):
        writer.append(_batch(offset), {app_id("g", "requests", 0): offset})


def _content(uri: str) -> list[tuple[int, float]]:
    table = DeltaTable(uri).to_pyarrow_table(columns=["kafka_offset", "amount"])
    return sorted(
        zip(table.column("kafka_offset").to_pylist(), table.column("amount").to_pylist(), strict=True)
    )


def test_optimize_compacts_small_files_and_keeps_the_data(tmp_path: Path) -> None:
    uri = str(tmp_path / "payload")
    _small_appends(uri, 12)
    before = _content(uri)

    report = optimize_table(uri)

    assert (report.files_before, report.files_after) == (12, 2)  # one file per date partition
    assert (report.files_compacted, report.files_written) == (12, 2)
    assert report.files_vacuumed == 0  # a week's retention keeps the replaced files
    assert _content(uri) == before
    assert DeltaTable(uri).transaction_version(app_id("g", "requests", 0)) == 11
    assert any(
        p.name.endswith(".checkpoint.parquet") for p in (tmp_path / "payload" / "_delta_log").iterdir()
    )


def test_vacuum_deletes_replaced_files_once_the_retention_allows(tmp_path: Path) -> None:
    uri = str(tmp_path / "payload")
    _small_appends(uri, 6)
    DeltaTable(uri).alter.set_table_properties({"delta.deletedFileRetentionDuration": "interval 0 hours"})

    report = optimize_table(uri, retention_hours=0)

    assert report.files_vacuumed == 6
    parquet = [p for p in (tmp_path / "payload").rglob("*.parquet") if "_delta_log" not in p.parts]
    assert len(parquet) == report.files_after == 2
    assert len(_content(uri)) == 6


def test_a_retention_below_the_tables_is_refused(tmp_path: Path) -> None:
    uri = str(tmp_path / "payload")
    _small_appends(uri, 2)

    with pytest.raises(ComponentError, match="delta: could not optimize"):
        optimize_table(uri, retention_hours=1)
    with pytest.raises(ConfigError):
        optimize_table(uri, retention_hours=-1)


def test_a_missing_table_is_a_component_error(tmp_path: Path) -> None:
    with pytest.raises(ComponentError):
        optimize_table(str(tmp_path / "nothing-here"))
