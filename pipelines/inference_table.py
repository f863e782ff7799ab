"""The endpoint's inference table as the service writes it: its schema from the served models'
signatures and feature services, the row format, and the inference log over it."""

from __future__ import annotations

import time
from collections.abc import Mapping

import pyarrow as pa

from lakeserve.features.feast_lookup import FeastFeatureLookup
from lakeserve.monitoring.delta_writer import InferenceTableWriter
from lakeserve.monitoring.inference_log import AnswerLog, InferenceLog
from lakeserve.monitoring.inference_rows import RowFormat
from lakeserve.monitoring.table_schema import inference_schema
from lakeserve.pipelines.settings import ServiceSettings
from lakeserve.scoring.models import ServedModel
from lakeserve.scoring.settings import EndpointSettings


def table_schema(models: Mapping[str, ServedModel], lookup: FeastFeatureLookup) -> pa.Schema:
    """Inference-table columns for these models: entity keys, model inputs, features, predictions."""
    inputs: dict[str, pa.DataType] = {}
    predictions: dict[str, pa.DataType] = {}
    for model in models.values():
        if model.feature_service is not None:
            for key, key_type in lookup.key_types(model.feature_service).items():
                inputs.setdefault(key, key_type or pa.string())
            for name, type_ in lookup.feature_types(model.feature_service).items():
                inputs.setdefault(name, type_ or pa.string())
        for f in model.input_schema or []:
            inputs.setdefault(f.name, f.type)
        for f in model.output_schema or []:
            predictions.setdefault(f.name, f.type)
    return inference_schema(inputs, predictions)


def row_format(endpoint: EndpointSettings, writer: InferenceTableWriter, schema: pa.Schema) -> RowFormat:
    """How this endpoint's results become rows of the table (created or widened to ``schema``)."""
    cap = endpoint.auto_capture_config
    return RowFormat(writer.ensure(schema), endpoint.name, cap.sampling_fraction, cap.payload_cap_bytes)


def new_inference_log(settings: ServiceSettings, writer: InferenceTableWriter, rows: RowFormat) -> InferenceLog:
    """The inference log of this endpoint's table, batched and retried as ``tables`` says."""
    tables = settings.tables
    return InferenceLog(
        writer,
        rows,
        settings.kafka.group_id,
        flush_rows=tables.flush_rows,
        flush_interval_ms=tables.flush_interval_ms,
        clock=time.monotonic,
        conflict_retries=tables.commit_conflict_retries,
        max_buffered_rows=tables.max_buffered_rows,
    )


def new_answer_log(settings: ServiceSettings) -> AnswerLog:
    """The position log of an endpoint without a table (``auto_capture_config.enabled: false``):
    answered offsets committed to Kafka, batched as ``tables`` says."""
    tables = settings.tables
    return AnswerLog(flush_rows=tables.flush_rows, flush_interval_ms=tables.flush_interval_ms, clock=time.monotonic)
