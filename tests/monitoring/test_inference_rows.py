"""Scoring results → inference-table rows: one row per record, nothing lost, nothing fails."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from lakeserve.monitoring.inference_rows import is_sampled, to_arrow
from lakeserve.monitoring.table_schema import inference_schema
from lakeserve.scoring.records import Origin, RecordResult, RequestResult, ScoringRequest, Timings

SCHEMA = inference_schema(
    {"amount": pa.float64(), "merchant": pa.string(), "card_age_days": pa.int64()},
    {"fraud_probability": pa.float64()},
)
# 23:30 at UTC-2 is 01:30 UTC the next day: the date column must be the UTC one
RECEIVED = datetime(2025, 3, 1, 23, 30, tzinfo=timezone(timedelta(hours=-2)))


def _result(
    request_id: str = "req-1", records: list[RecordResult] | None = None, body: bytes = b'{"x": 1}', **kw: Any
) -> RequestResult:
    request = ScoringRequest(
        request_id=request_id,
        body=body,
        received_at=RECEIVED,
        origin=Origin("kafka", topic="requests", partition=2, offset=41),
    )
    return RequestResult(
        request=request,
        status_code=kw.pop("status_code", 200),
        response_body=kw.pop("response_body", b'{"predictions": [0.1]}'),
        records=[RecordResult(0, prediction=0.1)] if records is None else records,
        timings=Timings(total_ms=12.5),
        **kw,
    )


def _rows(results: list[RequestResult], fraction: float = 1.0, cap: int = 1024) -> list[dict[str, Any]]:
    table = to_arrow(results, SCHEMA, "fraud-detection", fraction, cap)
    assert table.schema.equals(SCHEMA, check_metadata=True)
    rows: list[dict[str, Any]] = table.to_pylist()
    return rows


def test_a_request_of_three_records_gives_three_rows_sharing_the_request_id() -> None:
    records = [
        RecordResult(
            i,
            served_entity="champion",
            model_name="card_fraud",
            model_version="2",
            inputs={"amount": 10.0 * i, "merchant": f"m{i}"},
            prediction=0.1 * i,
            execution_time_ms=3.4,
        )
        for i in range(3)
    ]
    rows = _rows([_result(records=records, client_request_id="c-9")])

    assert [r["record_index"] for r in rows] == [0, 1, 2]
    assert {r["request_id"] for r in rows} == {"req-1"}
    first = rows[1]
    assert first["client_request_id"] == "c-9"
    assert first["date"] == date(2025, 3, 2)
    assert first["timestamp"] == datetime(2025, 3, 2, 1, 30, tzinfo=UTC)
    assert first["timestamp_ms"] == int(datetime(2025, 3, 2, 1, 30, tzinfo=UTC).timestamp() * 1000)
    assert (first["amount"], first["merchant"], first["fraud_probability"]) == (10.0, "m1", 0.1)
    assert json.loads(first["response"]) == 0.1
    assert first["request"] == '{"x": 1}'
    assert (first["execution_time_ms"], first["latency_ms"]) == (3, 12.5)
    assert dict(first["request_metadata"]) == {
        "endpoint_name": "fraud-detection",
        "model_name": "card_fraud",
        "model_version": "2",
        "served_entity": "champion",
    }
    assert (first["transport"], first["kafka_topic"], first["kafka_partition"], first["kafka_offset"]) == (
        "kafka",
        "requests",
        2,
        41,
    )
    assert first["logging_error_codes"] == []
    assert not first["is_shadow"]


def test_shadow_copies_are_rows_of_their_own() -> None:
    records = [
        RecordResult(0, served_entity="champion", prediction=0.2),
        RecordResult(0, served_entity="challenger", prediction=0.7, shadow=True),
    ]
    rows = _rows([_result(records=records)])

    assert [(r["served_entity"], r["is_shadow"], r["fraud_probability"]) for r in rows] == [
        ("champion", False, 0.2),
        ("challenger", True, 0.7),
    ]


def test_features_fill_fields_the_request_did_not_carry_and_the_request_wins() -> None:
    record = RecordResult(
        0,
        inputs={"amount": 5.0},
        features={"amount": 999.0, "card_age_days": np.int64(40)},
        prediction={"fraud_probability": np.float64(0.3), "unlogged": 1},
    )
    (row,) = _rows([_result(records=[record])])

    assert (row["amount"], row["card_age_days"], row["merchant"]) == (5.0, 40, None)
    assert row["fraud_probability"] == 0.3
    assert json.loads(row["response"]) == {"fraud_probability": 0.3, "unlogged": 1}


def test_a_body_over_the_cap_is_logged_as_null_with_a_code() -> None:
    rows = _rows([_result(body=b"x" * 2000), _result("req-2", body=b"\xffok")], cap=1024)

    assert rows[0]["request"] is None
    assert rows[0]["logging_error_codes"] == ["MAX_REQUEST_SIZE_EXCEEDED"]
    assert rows[1]["request"] == "\ufffdok"  # undecodable bytes replaced, not fatal
    assert rows[1]["logging_error_codes"] == []


def test_a_value_that_cannot_be_cast_is_null_with_a_code_and_the_batch_survives() -> None:
    good = RecordResult(0, inputs={"amount": 1.5, "card_age_days": 3}, prediction=0.4)
    bad = RecordResult(1, inputs={"amount": "lots", "card_age_days": 3.7}, prediction=float("nan"))
    rows = _rows([_result(records=[good, bad])])

    assert (rows[0]["amount"], rows[0]["card_age_days"], rows[0]["logging_error_codes"]) == (1.5, 3, [])
    assert (rows[1]["amount"], rows[1]["card_age_days"]) == (None, None)
    assert sorted(rows[1]["logging_error_codes"]) == ["CAST_FAILED:amount", "CAST_FAILED:card_age_days"]
    assert rows[1]["response"] == "null"  # non-finite prediction: valid JSON, not NaN


def test_a_request_that_failed_to_parse_still_gives_one_row() -> None:
    failed = _result(
        records=[],
        status_code=400,
        error_code="BAD_REQUEST",
        message="not JSON",
        response_body=b'{"error_code": "BAD_REQUEST", "message": "not JSON"}',
        body=b"{oops",
    )
    (row,) = _rows([failed])

    assert (row["record_index"], row["status_code"], row["error_code"]) == (0, 400, "BAD_REQUEST")
    assert row["error_message"] == "not JSON"
    assert json.loads(row["response"])["error_code"] == "BAD_REQUEST"
    assert row["request"] == "{oops"


def test_record_errors_are_logged_per_record() -> None:
    records = [
        RecordResult(0, prediction=0.5),
        RecordResult(1, status_code=400, error_code="INVALID_PARAMETER_VALUE", message="amount is NaN"),
    ]
    rows = _rows([_result(records=records)])

    assert [(r["status_code"], r["error_code"]) for r in rows] == [
        (200, None),
        (400, "INVALID_PARAMETER_VALUE"),
    ]
    assert json.loads(rows[1]["response"]) == {
        "error_code": "INVALID_PARAMETER_VALUE",
        "message": "amount is NaN",
    }


def test_sampling_keeps_whole_requests_and_always_keeps_errors() -> None:
    results = [
        _result(
            f"req-{i}",
            records=[
                RecordResult(0, prediction=0.1),
                RecordResult(1, prediction=0.2),
                RecordResult(2, status_code=500, error_code="MODEL_ERROR", message="boom"),
            ],
        )
        for i in range(200)
    ]
    rows = _rows(results, fraction=0.25)

    sampled = {f"req-{i}" for i in range(200) if is_sampled(f"req-{i}", 0.25)}
    assert 20 < len(sampled) < 80
    ok_requests = {r["request_id"] for r in rows if r["status_code"] == 200}
    assert ok_requests == sampled
    per_request = {rid: sum(r["request_id"] == rid for r in rows) for rid in ok_requests}
    assert set(per_request.values()) == {3}
    assert sum(r["status_code"] == 500 for r in rows) == 200
    assert {r["sampling_fraction"] for r in rows} == {0.25}


def test_sampling_is_stable_for_a_request_id() -> None:
    assert [is_sampled(f"r{i}", 0.5) for i in range(50)] == [is_sampled(f"r{i}", 0.5) for i in range(50)]
    assert all(is_sampled(f"r{i}", 1.0) for i in range(50))


def test_a_scalar_prediction_without_a_single_prediction_column_is_flagged() -> None:
    schema = inference_schema({"amount": pa.float64()}, {"label": pa.int64(), "score": pa.float64()})
    table = to_arrow([_result(records=[RecordResult(0, prediction=0.9)])], schema, "e", 1.0, 1024)

    (row,) = table.to_pylist()
    assert (row["label"], row["score"]) == (None, None)
    assert row["logging_error_codes"] == ["PREDICTION_NOT_LOGGED"]


def test_a_naive_arrival_time_is_refused() -> None:
    result = _result()
    naive = ScoringRequest("r", b"{}", datetime(2025, 1, 1), Origin("http"))  # noqa: DTZ001
    result.request = naive
    with pytest.raises(ValueError, match="timezone-aware"):
        to_arrow([result], SCHEMA, "e", 1.0, 1024)


def _column_of(values: list[Any], column: str) -> tuple[list[Any], list[list[str]]]:
    records = [RecordResult(i, inputs={column: v}, prediction=0.1) for i, v in enumerate(values)]
    rows = _rows([_result(records=records)])
    return [r[column] for r in rows], [r["logging_error_codes"] for r in rows]


@pytest.mark.parametrize(
    ("values", "logged", "failed"),
    [
        ([3, 4.0, None, np.int64(5)], [3, 4, None, 5], []),  # integral floats cast whole
        ([3.0, 3.7, 2.0], [3, None, 2], [1]),  # all floats: one would truncate
        ([1, float("nan")], [1, None], [1]),  # NaN is no integer
        ([1, True], [1, None], [1]),  # a bool is no integer
        ([1, "7"], [1, None], [1]),  # strings are not parsed
    ],
)
def test_integer_columns_fail_only_the_values_that_do_not_fit(
    values: list[Any], logged: list[Any], failed: list[int]
) -> None:
    column, codes = _column_of(values, "card_age_days")
    assert column == logged
    assert [i for i, c in enumerate(codes) if c == ["CAST_FAILED:card_age_days"]] == failed
    assert all(c == [] for i, c in enumerate(codes) if i not in failed)


def test_numbers_are_not_logged_as_strings_nor_strings_as_numbers() -> None:
    merchants, merchant_codes = _column_of(["shop", 7], "merchant")
    amounts, amount_codes = _column_of([1.5, "2.5", True], "amount")
    assert (merchants, merchant_codes) == (["shop", None], [[], ["CAST_FAILED:merchant"]])
    assert (amounts, amount_codes) == ([1.5, None, 1.0], [[], ["CAST_FAILED:amount"], []])
