"""The REST server: wiring from the settings tree, and ``run_http`` on a production ASGI server.

``run_http`` serves the app of :mod:`lakeserve.pipelines.http_app` with uvicorn until a stop
event. The models load in the background at startup (``/health`` answers at once, ``/ready``
once they are loaded), through the same parts as a Kafka worker: the MLflow models, Feast,
the scoring core and the endpoint's inference table. HTTP rows are logged at most once, best
effort (:mod:`lakeserve.pipelines.http_logging`); Kafka's are logged exactly once.

Security wiring (the ``http`` section): TLS from ``ssl_certfile``/``ssl_keyfile``; forwarding
headers believed only from ``trusted_proxies`` (uvicorn's own default would trust loopback); the
bounded queue (``max_queued``) and per-client rate limits handed to the app.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Sequence

import uvicorn
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from lakeserve.errors import ConfigError, format_validation_error
from lakeserve.features.feast_lookup import FeastFeatureLookup
from lakeserve.features.store import feature_store
from lakeserve.monitoring.delta_writer import DeltaInferenceWriter
from lakeserve.monitoring.inference_rows import RowFormat
from lakeserve.pipelines.auth import AccessGuard
from lakeserve.pipelines.http_app import Scoring, create_app
from lakeserve.pipelines.http_batcher import MicroBatcher
from lakeserve.pipelines.http_logging import HttpTableLogger
from lakeserve.pipelines.http_settings import HttpSettings
from lakeserve.pipelines.inference_table import new_inference_log, row_format, table_schema
from lakeserve.pipelines.metrics import ServiceMetrics
from lakeserve.pipelines.rate_limit import RateLimiter
from lakeserve.pipelines.settings import ServiceSettings
from lakeserve.pipelines.stop_deadline import rest_drain_s
from lakeserve.pipelines.updates import Update, apply_pending_update, load_models, new_updater
from lakeserve.scoring.core import ScoringCore
from lakeserve.scoring.models import model_summary
from lakeserve.scoring.records import RequestResult, ScoringRequest

log = logging.getLogger(__name__)


def new_metrics(settings: ServiceSettings) -> ServiceMetrics:
    """A fresh registry and metrics for this endpoint (one per process, passed down)."""
    return ServiceMetrics(CollectorRegistry(), settings.endpoint.name, settings.http.dashboard_window_s)


def load_scoring(settings: ServiceSettings, metrics: ServiceMetrics) -> Scoring:
    """Models, Feast, the core, the table logger, the batcher and the endpoint updater (blocking:
    loads the models). Prepared updates are swapped in before a micro-batch, as on the Kafka path."""
    endpoint = settings.endpoint
    lookup = FeastFeatureLookup(feature_store(settings.feast))
    models = load_models(settings, endpoint)
    core = ScoringCore(endpoint, models, lookup)
    updater = new_updater(settings, endpoint, models)
    writer = (
        DeltaInferenceWriter(settings.inference_table_uri, settings.tables.delta_storage_options())
        if endpoint.auto_capture_config.enabled
        else None
    )
    table: HttpTableLogger | None = None
    if writer is not None:
        rows = row_format(endpoint, writer, table_schema(models, lookup))
        table = HttpTableLogger(new_inference_log(settings, writer, rows), metrics)
        table.start()
    served = model_summary(models)  # /ready shows it; kept current across swaps
    stop_watching = threading.Event()
    threading.Thread(target=updater.watch, args=(stop_watching,), name="endpoint-updater", daemon=True).start()

    def new_target(update: Update) -> RowFormat | None:
        return row_format(update.endpoint, writer, table_schema(update.models, lookup)) if writer else None

    def score(requests: Sequence[ScoringRequest]) -> list[RequestResult]:
        swapped = apply_pending_update(updater, core, new_target)
        if swapped is not None:
            update, target = swapped
            served.clear()
            served.update(model_summary(update.models))
            if table is not None and target is not None:
                table.log.row_format = target
        return core.score(requests)

    def on_scored(results: list[RequestResult]) -> None:
        metrics.batch_scored("http", results)
        if table is not None:
            table.add(results)

    def close() -> None:
        stop_watching.set()
        if table is not None:
            table.stop()
        for model in updater.current.models.values():
            model.unload()

    def on_dropped(count: int) -> None:  # caller gone or past its deadline: not scored, not logged
        metrics.requests_dropped("http", count)

    max_queued = settings.http.max_queued
    batcher = MicroBatcher(score, endpoint.limits, on_scored, max_queued=max_queued, on_dropped=on_dropped)
    metrics.watch_queue(lambda: batcher.queued)
    return Scoring(batcher, served, close, core.stalled)


def listen_settings(http: HttpSettings, host: str | None, port: int | None) -> HttpSettings:
    """``http`` with the host and port given on the command line, validated again: binding a
    public address turns access control on, and it must then be configured."""
    update = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    try:
        return HttpSettings.model_validate({**http.model_dump(), **update})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, section="http")) from None


def build_server(
    settings: ServiceSettings, metrics: ServiceMetrics, host: str | None = None, port: int | None = None
) -> uvicorn.Server:
    http = listen_settings(settings.http, host, port)
    guard, limiter = AccessGuard(http), RateLimiter(http)
    app = create_app(settings.endpoint, guard, metrics, lambda: load_scoring(settings, metrics), limiter)
    config = uvicorn.Config(
        app,
        host=http.host,
        port=http.port,
        # uvicorn believes X-Forwarded-For from 127.0.0.1 unless told otherwise: only trusted_proxies
        proxy_headers=bool(http.trusted_proxies),
        forwarded_allow_ips=list(http.trusted_proxies),
        ssl_certfile=http.ssl_certfile,
        ssl_keyfile=http.ssl_keyfile,
        log_level="warning",
        access_log=False,  # an access log line would be the place a token leaks; metrics count instead
        lifespan="on",
        server_header=False,
        timeout_graceful_shutdown=rest_drain_s(settings.endpoint.limits),  # in flight: answered or 504 by then
    )
    return uvicorn.Server(config)


def run_http(
    settings: ServiceSettings,
    stop: threading.Event,
    host: str | None = None,
    port: int | None = None,
    *,
    metrics: ServiceMetrics | None = None,
    sock: socket.socket | None = None,
) -> None:
    """Serve until ``stop`` is set, then drain: queued requests are answered and rows flushed.

    ``sock``: an already bound socket to serve on (tests bind port 0 and read the port back).
    """
    server = build_server(settings, metrics or new_metrics(settings), host, port)

    def exit_on_stop() -> None:
        stop.wait()
        server.should_exit = True

    threading.Thread(target=exit_on_stop, name="http-stop-watcher", daemon=True).start()
    where = sock.getsockname() if sock is not None else (server.config.host, server.config.port)
    scheme = "https" if server.config.is_ssl else "http"
    log.info("HTTP endpoint %s listening on %s://%s:%s", settings.endpoint.name, scheme, *where[:2])
    server.run(sockets=[sock] if sock is not None else None)
