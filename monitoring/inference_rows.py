"""Scoring results → inference-table rows (one Arrow row per scored record).

A request of N records gives N rows sharing ``request_id``; a shadow copy is one more row
with ``is_shadow`` true; a request that failed before any record existed (bad JSON, body
too large) still gives one row with ``record_index`` 0, so every request is logged.

Nothing here fails a batch because of one value: a value that cannot be cast to its
column's type is logged as null and its row gets ``CAST_FAILED:<column>`` in
``logging_error_codes``; a body over the logging cap is logged as null with
``MAX_REQUEST_SIZE_EXCEEDED``. The column layout is :mod:`lakeserve.monitoring.table_schema`.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from lakeserve.errors import PayloadTooLarge
from lakeserve.monitoring.table_schema import BASE_COLUMNS, prediction_column_names
from lakeserve.scoring.records import RecordResult, RequestResult, json_value

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_HASH_SPACE = float(2**64)
_CAST_ERRORS = (pa.ArrowException, TypeError, ValueError, OverflowError)


@dataclass(frozen=True, slots=True)
class _Context:
    endpoint_name: str
    sampling_fraction: float
    payload_cap_bytes: int
    prediction_columns: tuple[str, ...]


@dataclass(slots=True)
class _Row:
    fixed: dict[str, Any]  # values of the fixed columns
    model: dict[str, Any]  # model inputs, features and predictions by column name
    codes: list[str] = field(default_factory=list)  # logging_error_codes


@dataclass(frozen=True, slots=True)
class RowFormat:
    """How results become rows: the table's schema and the endpoint's logging settings."""

    schema: pa.Schema
    endpoint_name: str
    sampling_fraction: float
    payload_cap_bytes: int

    def rows(self, results: Sequence[RequestResult]) -> pa.Table:
        return to_arrow(results, self.schema, self.endpoint_name, self.sampling_fraction, self.payload_cap_bytes)


def is_sampled(request_id: str, sampling_fraction: float) -> bool:
    """Stable across processes and restarts: the same request id is always kept or always dropped."""
    digest = hashlib.blake2b(request_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _HASH_SPACE < sampling_fraction


def to_arrow(
    results: Sequence[RequestResult],
    schema: pa.Schema,
    endpoint_name: str,
    sampling_fraction: float,
    payload_cap_bytes: int,
) -> pa.Table:
    """The rows of ``results`` with exactly ``schema``'s columns, sampled by request.

    A sampled request keeps all its rows (shadow copies included); a request outside the
    sample keeps only its error rows (status other than 200), so every failure is logged
    while the successful rows stay an unbiased sample.
    """
    predictions = tuple(prediction_column_names(schema))
    ctx = _Context(endpoint_name, sampling_fraction, payload_cap_bytes, predictions)
    rows = [row for result in results for row in _request_rows(result, ctx)]
    return _table(rows, schema)


def _request_rows(result: RequestResult, ctx: _Context) -> list[_Row]:
    sampled = is_sampled(result.request.request_id, ctx.sampling_fraction)
    fixed, codes = _request_fields(result, ctx)
    if not result.records:
        rows = [_Row({**fixed, **_failure_fields(result, ctx.endpoint_name)}, {}, list(codes))]
    else:
        rows = [_record_row(record, fixed, codes, ctx) for record in result.records]
    return [row for row in rows if sampled or row.fixed["status_code"] != 200]


def _request_fields(result: RequestResult, ctx: _Context) -> tuple[dict[str, Any], list[str]]:
    request = result.request
    received = _utc(request.received_at)
    body, codes = _body(request.body, ctx.payload_cap_bytes)
    fixed = {
        "request_id": request.request_id,
        "client_request_id": result.client_request_id,
        "date": received.date(),
        "timestamp_ms": (received - _EPOCH) // timedelta(milliseconds=1),
        "timestamp": received,
        "sampling_fraction": ctx.sampling_fraction,
        "latency_ms": result.timings.total_ms,
        "request": body,
        "transport": request.origin.transport,
        "kafka_topic": request.origin.topic,
        "kafka_partition": request.origin.partition,
        "kafka_offset": request.origin.offset,
    }
    return fixed, codes


def _failure_fields(result: RequestResult, endpoint_name: str) -> dict[str, Any]:
    """The single row of a request that has no records: the request-level answer."""
    return {
        "record_index": 0,
        "status_code": result.status_code,
        "error_code": result.error_code,
        "error_message": result.message,
        "execution_time_ms": None,
        "response": result.response_body.decode("utf-8", errors="replace"),
        "request_metadata": [("endpoint_name", endpoint_name)],
        "is_shadow": False,
    }


def _record_row(record: RecordResult, fixed: Mapping[str, Any], codes: list[str], ctx: _Context) -> _Row:
    row = _Row({**fixed}, _model_values(record, ctx.prediction_columns), list(codes))
    row.fixed.update(
        record_index=record.record_index,
        status_code=record.status_code,
        error_code=record.error_code,
        error_message=record.message,
        execution_time_ms=_whole_ms(record.execution_time_ms),
        response=_record_response(record),
        request_metadata=_metadata(record, ctx.endpoint_name),
        served_entity=record.served_entity,
        model_name=record.model_name,
        model_version=record.model_version,
        is_shadow=record.shadow,
    )
    if _scalar_without_column(record.prediction, ctx.prediction_columns):
        row.codes.append("PREDICTION_NOT_LOGGED")
    return row


def _scalar_without_column(prediction: Any, prediction_columns: Sequence[str]) -> bool:
    """A single-output prediction, but the schema has no single prediction column for it."""
    single = prediction is not None and not isinstance(prediction, Mapping)
    return single and len(prediction_columns) != 1


def _model_values(record: RecordResult, prediction_columns: Sequence[str]) -> dict[str, Any]:
    """Inputs the model saw (:meth:`RecordResult.model_input`), then predictions."""
    values = {k: v for k, v in record.model_input().items() if k not in prediction_columns}
    prediction = record.prediction
    if isinstance(prediction, Mapping):
        values.update({k: v for k, v in prediction.items() if k in prediction_columns})
    elif prediction is not None and len(prediction_columns) == 1:
        values[prediction_columns[0]] = prediction
    return values


def _body(body: bytes, cap: int) -> tuple[str | None, list[str]]:
    if len(body) > cap:
        return None, [PayloadTooLarge.error_code]
    return body.decode("utf-8", errors="replace"), []


def _record_response(record: RecordResult) -> str:
    if record.ok:
        return json.dumps(json_value(record.prediction), allow_nan=False)
    return json.dumps({"error_code": record.error_code, "message": record.message})


def _metadata(record: RecordResult, endpoint_name: str) -> list[tuple[str, str]]:
    pairs = {
        "endpoint_name": endpoint_name,
        "model_name": record.model_name,
        "model_version": record.model_version,
        "served_entity": record.served_entity,
        "device": record.device,
    }
    return [(k, v) for k, v in pairs.items() if v is not None]


def _whole_ms(ms: float) -> int | None:
    return round(ms) if math.isfinite(ms) else None


def _utc(ts: datetime) -> datetime:
    if ts.tzinfo is None:
        raise ValueError(f"received_at must be timezone-aware, got naive {ts.isoformat()}")
    return ts.astimezone(UTC)


def _table(rows: list[_Row], schema: pa.Schema) -> pa.Table:
    columns = {f.name: _column(rows, f) for f in schema if f.name != "logging_error_codes"}
    if "logging_error_codes" in schema.names:  # last: the casts above add their codes
        columns["logging_error_codes"] = pa.array([r.codes for r in rows], pa.list_(pa.string()))
    return pa.Table.from_arrays([columns[name] for name in schema.names], schema=schema)


def _column(rows: list[_Row], column: pa.Field) -> pa.Array:
    fixed = column.name in BASE_COLUMNS
    values = [(r.fixed if fixed else r.model).get(column.name) for r in rows]
    try:
        return _cast_whole(values, column.type)
    except _CAST_ERRORS:
        return _cast_each(values, rows, column)


def _cast_whole(values: list[Any], type_: pa.DataType) -> pa.Array:
    """The column in one vectorised conversion; raises one of ``_CAST_ERRORS`` if any value fails.

    Arrow checks every value of a typed conversion, except that it cuts 3.7 to 3 for an integer
    column: there the values are converted to their own type first and cast safely, so a float
    that would truncate (3.7, NaN) fails the whole column. Whatever else is not a number fails
    the typed conversion, as it fails value by value.
    """
    if not pa.types.is_integer(type_):
        return pa.array(values, type=type_)
    inferred = pa.array(values)
    if not _numeric(inferred.type):
        return pa.array(values, type=type_)
    return pc.cast(inferred, type_, safe=True)


def _numeric(t: pa.DataType) -> bool:
    return bool(pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_null(t))


def _cast_each(values: list[Any], rows: list[_Row], column: pa.Field) -> pa.Array:
    """Value by value, so one bad value costs one null and a code, not the batch."""
    kept: list[Any] = []
    for value, row in zip(values, rows, strict=True):
        if _castable(value, column.type):
            kept.append(value)
        else:
            kept.append(None)
            row.codes.append(f"CAST_FAILED:{column.name}")
    return pa.array(kept, type=column.type)


def _castable(value: Any, type_: pa.DataType) -> bool:
    if _truncates(value, type_):
        return False
    try:
        pa.array([value], type=type_)
    except _CAST_ERRORS:
        return False
    return True


def _truncates(value: Any, type_: pa.DataType) -> bool:
    """Arrow silently truncates 3.7 to 3 for an integer column; that is a failed cast here."""
    if not pa.types.is_integer(type_) or isinstance(value, numbers.Integral):
        return False
    return isinstance(value, numbers.Real) and not float(value).is_integer()
