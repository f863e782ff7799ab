"""The inference table's schema, declared here and nowhere else (documented in docs/inference-table.md).

One row per scored record: a request of N records gives N rows that share ``request_id``
and differ in ``record_index``; a shadow copy is one more row with ``is_shadow`` true.
The fixed columns below come first; then one typed column per model input (request fields
and looked-up features, the value the model actually saw) and the prediction column(s).
The dynamic part is derived from the served models' signatures when the endpoint loads and
only ever grows by columns added on purpose (see :func:`extend_schema`); nothing is renamed,
dropped or retyped, so queries users wrote keep working.
"""

from __future__ import annotations

from collections.abc import Mapping

import pyarrow as pa

PARTITION_COLUMNS = ["date"]

BASE_FIELDS: list[pa.Field] = [
    pa.field("request_id", pa.string(), nullable=False),  # server id, like databricks_request_id
    pa.field("client_request_id", pa.string()),
    pa.field("record_index", pa.int32(), nullable=False),
    pa.field("date", pa.date32(), nullable=False),  # UTC date of arrival; partition column
    pa.field("timestamp_ms", pa.int64(), nullable=False),  # epoch ms of arrival
    pa.field("timestamp", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("status_code", pa.int32(), nullable=False),
    pa.field("error_code", pa.string()),
    pa.field("error_message", pa.string()),
    pa.field("sampling_fraction", pa.float64(), nullable=False),
    pa.field("execution_time_ms", pa.int64()),  # model time
    pa.field("latency_ms", pa.float64()),  # arrival to result, model time included
    pa.field("request", pa.string()),  # raw body; null when over the logging cap
    pa.field("response", pa.string()),  # this record's answer as JSON
    pa.field("request_metadata", pa.map_(pa.string(), pa.string())),  # endpoint, model name, version, device
    pa.field("served_entity", pa.string()),
    pa.field("model_name", pa.string()),
    pa.field("model_version", pa.string()),
    pa.field("is_shadow", pa.bool_(), nullable=False),
    pa.field("transport", pa.string(), nullable=False),  # kafka | http | batch
    pa.field("kafka_topic", pa.string()),
    pa.field("kafka_partition", pa.int32()),
    pa.field("kafka_offset", pa.int64()),
    pa.field("logging_error_codes", pa.list_(pa.string())),  # e.g. MAX_REQUEST_SIZE_EXCEEDED
]

BASE_COLUMNS = frozenset(f.name for f in BASE_FIELDS)

# Field metadata naming the role of a dynamic column; it travels into the Delta schema.
ROLE_KEY = b"lakeserve.role"
INPUT_ROLE = b"input"
PREDICTION_ROLE = b"prediction"


def prediction_column_names(schema: pa.Schema) -> list[str]:
    """Names of the columns :func:`inference_schema` tagged as predictions, in schema order."""
    return [f.name for f in schema if (f.metadata or {}).get(ROLE_KEY) == PREDICTION_ROLE]


def inference_schema(
    input_columns: Mapping[str, pa.DataType], prediction_columns: Mapping[str, pa.DataType]
) -> pa.Schema:
    """The full schema: fixed columns, then model inputs, then predictions (all nullable).

    Each dynamic field carries its role (``lakeserve.role``: ``input`` or ``prediction``) as
    field metadata, so the row builder and the monitoring jobs know which columns hold
    predictions without a second argument.
    """
    clash = (set(input_columns) | set(prediction_columns)) & BASE_COLUMNS
    if clash:
        raise ValueError(f"model columns clash with fixed inference-table columns: {sorted(clash)}")
    both = set(input_columns) & set(prediction_columns)
    if both:
        raise ValueError(f"columns are both model inputs and predictions: {sorted(both)}")
    dynamic = [pa.field(n, t, metadata={ROLE_KEY: INPUT_ROLE}) for n, t in input_columns.items()]
    dynamic += [pa.field(n, t, metadata={ROLE_KEY: PREDICTION_ROLE}) for n, t in prediction_columns.items()]
    return pa.schema([*BASE_FIELDS, *dynamic])


def extend_schema(current: pa.Schema, wanted: pa.Schema) -> pa.Schema:
    """The table schema after adding ``wanted``'s new columns; refuses any other change."""
    for f in wanted:
        if f.name in current.names and not current.field(f.name).type.equals(f.type):
            raise ValueError(
                f"inference-table column {f.name!r} is {current.field(f.name).type} in the table "
                f"but {f.type} for the endpoint; retyping a column is not done silently"
            )
    added = [f for f in wanted if f.name not in current.names]
    return pa.schema([*current, *added])
