"""Wiring of one scoring worker from the settings: the only place that knows every part.

``build_worker`` loads the served models, opens Feast and the inference table (declaring its
schema from the models' signatures and the feature services), and composes the delivery loop
(:mod:`lakeserve.pipelines.delivery_loop`) with the Kafka source and sink and the inference log;
with ``auto_capture_config.enabled: false`` no table is opened or created, and the loop gets an
answer log that only commits the answered offsets to Kafka.
``run_worker`` runs it until a stop event, with the endpoint updater watching in a background
thread; updates are swapped in between micro-batches (:func:`~lakeserve.pipelines.updates.apply_pending_update`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from lakeserve.features.feast_lookup import FeastFeatureLookup
from lakeserve.features.store import feature_store
from lakeserve.monitoring.delta_writer import DeltaInferenceWriter
from lakeserve.monitoring.inference_log import PositionLog
from lakeserve.pipelines.crash_guard import CrashGuard
from lakeserve.pipelines.delivery_loop import DeliveryLoop, RetryPolicy
from lakeserve.pipelines.inference_table import new_answer_log, new_inference_log, row_format, table_schema
from lakeserve.pipelines.kafka_errors import check_login
from lakeserve.pipelines.kafka_settings import KafkaSettings
from lakeserve.pipelines.kafka_sinks import KafkaResponseSink
from lakeserve.pipelines.kafka_source import KafkaRequestSource, RebalanceHandler
from lakeserve.pipelines.metrics import LoopMetrics
from lakeserve.pipelines.settings import ServiceSettings
from lakeserve.pipelines.updates import EndpointUpdater, apply_pending_update, load_models, new_updater
from lakeserve.scoring.core import ScoringCore
from lakeserve.scoring.models import model_summary
from lakeserve.scoring.settings import EndpointSettings

log = logging.getLogger(__name__)


@dataclass
class Worker:
    loop: DeliveryLoop
    core: ScoringCore
    updater: EndpointUpdater


def build_worker(
    settings: ServiceSettings,
    *,
    endpoint: EndpointSettings | None = None,
    metrics: LoopMetrics | None = None,
    guard: CrashGuard | None = None,
) -> Worker:
    endpoint = endpoint or settings.endpoint
    check_login(settings.kafka)  # refused Kafka credentials fail at once, before the models load
    lookup = FeastFeatureLookup(feature_store(settings.feast))
    models = load_models(settings, endpoint)
    core = ScoringCore(endpoint, models, lookup)
    updater = new_updater(settings, endpoint, models)
    if endpoint.auto_capture_config.enabled:
        writer = DeltaInferenceWriter(settings.inference_table_uri, settings.tables.delta_storage_options())
        table_log = new_inference_log(settings, writer, row_format(endpoint, writer, table_schema(models, lookup)))
        position_log: PositionLog = table_log

        def before_batch() -> None:
            swapped = apply_pending_update(
                updater, core, lambda u: row_format(u.endpoint, writer, table_schema(u.models, lookup))
            )
            if swapped is not None:
                table_log.row_format = swapped[1]
    else:  # no table: offsets are committed to Kafka once answered (delivery_loop's docstring)
        position_log = new_answer_log(settings)

        def before_batch() -> None:
            apply_pending_update(updater, core, lambda u: None)

    def make_source(handler: RebalanceHandler) -> KafkaRequestSource:
        return KafkaRequestSource(settings.kafka, endpoint.limits, handler, metrics=metrics)

    loop = DeliveryLoop(
        make_source,
        core,
        KafkaResponseSink(settings.kafka),
        position_log,
        retry_policy(settings.kafka),
        before_batch=before_batch,
        metrics=metrics,
        rejoin_timeout_s=settings.kafka.rejoin_timeout_ms / 1000,
        guard=guard,
    )
    return Worker(loop, core, updater)


def retry_policy(kafka: KafkaSettings) -> RetryPolicy:
    return RetryPolicy(
        backoff_initial_s=kafka.retry_backoff_initial_ms / 1000,
        backoff_max_s=kafka.retry_backoff_max_ms / 1000,
        outage_deadline_s=kafka.outage_deadline_ms / 1000,
    )


def run_worker(
    settings: ServiceSettings,
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
