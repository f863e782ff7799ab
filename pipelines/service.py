"""Wiring of one scoring worker from the settings tree: the only place that knows every part.

``build_worker`` loads the served models, opens Feast and the inference table (declaring its
schema from the models' signatures and the feature services), and composes the delivery loop
(:mod:`lakeserve.pipelines.delivery_loop`) with the Kafka source and sink and the inference log. ``run_worker`` runs it
until a stop event, with the endpoint updater watching in a background thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import pyarrow as pa

from lakeserve.errors import ConfigError
from lakeserve.features.feast_lookup import FeastFeatureLookup
from lakeserve.features.store import feature_store
from lakeserve.monitoring.delta_writer import DeltaInferenceWriter, InferenceTableWriter
from lakeserve.monitoring.inference_log import InferenceLog
from lakeserve.monitoring.inference_rows import RowFormat
from lakeserve.monitoring.table_schema import inference_schema
from lakeserve.pipelines.crash_guard import CrashGuard
from lakeserve.pipelines.delivery_loop import DeliveryLoop, RetryPolicy
from lakeserve.pipelines.kafka_settings import KafkaSettings
from lakeserve.pipelines.kafka_sinks import KafkaResponseSink
from lakeserve.pipelines.kafka_source import KafkaRequestSource, RebalanceHandler
from lakeserve.pipelines.metrics import LoopMetrics
from lakeserve.pipelines.settings import Settings
from lakeserve.pipelines.updates import EndpointUpdater, Update
from lakeserve.scoring.core import ScoringCore
from lakeserve.scoring.models import MlflowServedModel, ServedModel, model_summary
from lakeserve.scoring.settings import EndpointSettings

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Worker:
    loop: DeliveryLoop
    core: ScoringCore
    updater: EndpointUpdater


def load_models(settings: Settings, endpoint: EndpointSettings) -> dict[str, ServedModel]:
    return {e.name: MlflowServedModel.load(e, settings.mlflow) for e in endpoint.served_entities}


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


def new_updater(settings: Settings, endpoint: EndpointSettings, models: Mapping[str, ServedModel]) -> EndpointUpdater:
    """The updater that watches this endpoint's control file and aliases for a service serving ``models``."""
    return EndpointUpdater(
        endpoint,
        models,
        settings.stack.state_dir,
        settings.mlflow,
        lambda entity: MlflowServedModel.load(entity, settings.mlflow),
    )


def build_worker(
    settings: Settings,
    *,
    endpoint: EndpointSettings | None = None,
    metrics: LoopMetrics | None = None,
    guard: CrashGuard | None = None,
) -> Worker:
    endpoint = endpoint or settings.endpoint
    lookup = FeastFeatureLookup(feature_store(settings.feast))
    models = load_models(settings, endpoint)
    core = ScoringCore(endpoint, models, lookup)
    writer = DeltaInferenceWriter(settings.inference_table_uri)
    inference_log = new_inference_log(settings, writer, row_format(endpoint, writer, table_schema(models, lookup)))
    updater = new_updater(settings, endpoint, models)

    def before_batch() -> None:
        swapped = apply_pending_update(
            updater, core, lambda u: row_format(u.endpoint, writer, table_schema(u.models, lookup))
        )
        if swapped is not None:
            inference_log.row_format = swapped[1]

    def make_source(handler: RebalanceHandler) -> KafkaRequestSource:
        return KafkaRequestSource(settings.kafka, endpoint.limits, handler, metrics=metrics)

    loop = DeliveryLoop(
        make_source,
        core,
        KafkaResponseSink(settings.kafka, endpoint.limits.max_request_bytes),
        inference_log,
        retry_policy(settings.kafka),
        before_batch=before_batch,
        metrics=metrics,
        rejoin_timeout_s=settings.kafka.rejoin_timeout_ms / 1000,
        guard=guard,
    )
    return Worker(loop, core, updater)


def new_inference_log(settings: Settings, writer: InferenceTableWriter, rows: RowFormat) -> InferenceLog:
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


def retry_policy(kafka: KafkaSettings) -> RetryPolicy:
    return RetryPolicy(
        backoff_initial_s=kafka.retry_backoff_initial_ms / 1000,
        backoff_max_s=kafka.retry_backoff_max_ms / 1000,
        outage_deadline_s=kafka.outage_deadline_ms / 1000,
    )


def apply_pending_update(
    updater: EndpointUpdater, core: ScoringCore, prepare: Callable[[Update], T]
) -> tuple[Update, T] | None:
    """Swap the updater's prepared update into ``core``, if there is one; call between micro-batches.

    ``prepare`` builds what the caller must install with the new models (its row format); it
    runs before the swap, so a ConfigError from it or from the swap refuses the update and the
    old config keeps serving. Returns the update and what ``prepare`` built, or None. Shared by
    the Kafka loop and the REST server, so both follow ``lakeserve endpoint update`` and aliases.
    """
    update = updater.take_pending()
    if update is None:
        return None
    try:
        prepared = prepare(update)
        retired = core.swap(update.models, update.endpoint).models
    except ConfigError as exc:
        log.error("endpoint update refused, old config keeps serving: %s", exc)
        updater.refused(update, exc)
        return None
    updater.applied(update, retired)
    log.info("endpoint %s now serves %s", update.endpoint.name, model_summary(update.models))
    return update, prepared


def row_format(endpoint: EndpointSettings, writer: InferenceTableWriter, schema: pa.Schema) -> RowFormat:
    """How this endpoint's results become rows of the table (created or widened to ``schema``)."""
    cap = endpoint.auto_capture_config
    return RowFormat(writer.ensure(schema), endpoint.name, cap.sampling_fraction, cap.payload_cap_bytes)


def run_worker(
    settings: Settings,
    stop: threading.Event,
    metrics: LoopMetrics | None = None,
    on_assigned: Callable[[], None] = lambda: None,
    guard: CrashGuard | None = None,
) -> None:
    """Build a worker and run its loop until ``stop``; the updater watches in the background.
    ``on_assigned`` is called whenever the group gives the worker partitions (readiness)."""
    worker = build_worker(settings, metrics=metrics, guard=guard)
    worker.loop.on_assigned = on_assigned
    log.info("worker serving %s in group %s", model_summary(worker.core.table.models), settings.kafka.group_id)
    watcher = threading.Thread(target=worker.updater.watch, args=(stop,), name="endpoint-updater", daemon=True)
    watcher.start()
    worker.loop.run(stop)
