"""Service metrics: Prometheus series on an injected registry, plus the dashboard's rolling window.

One :class:`ServiceMetrics` per process is built at the edge and passed down (never the global
default registry). Both transports report into it: the HTTP server as it answers, the Kafka
delivery loop through the :class:`LoopMetrics` hook after each scored batch, each flush, each
retry and each outage's end, and the Kafka source with its consumer lag before each poll. Kafka
workers in processes of their own report through :mod:`lakeserve.pipelines.metrics_relay`.

A request is attributed to each distinct served entity among its answered records (``none``
when it failed before routing); latency is split into model time (the ``predict`` call of its
batch) and overhead (everything else: parsing, batching wait, feature lookup, answering).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from lakeserve.pipelines.rolling_window import RollingWindow
from lakeserve.scoring.records import RequestResult

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
NO_ENTITY = "none"
Partition = tuple[str, int]


class LoopMetrics(Protocol):
    """What the Kafka delivery loop and source report (implemented by :class:`ServiceMetrics`)."""

    def batch_scored(self, transport: str, results: Sequence[RequestResult]) -> None: ...
    def table_flushed(self, transport: str, rows: int, seconds: float) -> None: ...
    def consumer_lag(self, lags: Mapping[Partition, int]) -> None: ...
    def component_retry(self, component: str) -> None: ...
    def component_outage(self, component: str, seconds: float) -> None: ...


def entities(result: RequestResult) -> list[str]:
    """The served entities a request is attributed to."""
    names = dict.fromkeys(r.served_entity or NO_ENTITY for r in result.answered_records())
    return list(names) or [NO_ENTITY]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the metrics keep of one answered request: small, so a worker process can send it on."""

    entities: tuple[str, ...]
    status_code: int
    error_code: str | None
    latency_s: float  # arrival to answer
    model_s: float  # the predict call of its batch

    @classmethod
    def of(cls, result: RequestResult, latency_s: float) -> Outcome:
        model_s = result.timings.model_ms / 1000
        return cls(tuple(entities(result)), result.status_code, result.error_code, latency_s, model_s)


class ServiceMetrics:
    """Prometheus series (``lakeserve_*``) for one endpoint, and the dashboard window."""

    def __init__(
        self,
        registry: CollectorRegistry,
        endpoint: str,
        window_s: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry, self.endpoint = registry, endpoint
        self.window = RollingWindow(window_s, clock=clock)
        entity, per_batch = ["endpoint", "served_entity", "transport"], ["endpoint", "transport"]
        self.requests = Counter("lakeserve_requests", "Requests answered", [*entity, "status_code"], registry=registry)
        self.errors = Counter("lakeserve_errors", "Error answers", [*entity, "error_code"], registry=registry)
        self.latency = _seconds(registry, "lakeserve_request_latency_seconds", "Arrival to answer", entity)
        self.model_latency = _seconds(registry, "lakeserve_model_latency_seconds", "Model time", entity)
        self.overhead = _seconds(registry, "lakeserve_overhead_latency_seconds", "Latency minus model time", entity)
        self.batch_size = Histogram(
            "lakeserve_batch_size_requests", "Requests per micro-batch", per_batch, buckets=BATCH_BUCKETS,
            registry=registry,
        )  # fmt: skip
        self.lag = Gauge(
            "lakeserve_kafka_consumer_lag_messages", "Highwater minus position, per assigned partition",
            ["endpoint", "topic", "partition"], registry=registry,
        )  # fmt: skip
        self._lag_reported: dict[Hashable, set[Partition]] = {}  # reporter -> partitions it last reported
        self._lag_lock = threading.Lock()
        self.flush_delay = _seconds(
            registry, "lakeserve_inference_table_flush_delay_seconds", "Duration of one table append", per_batch
        )
        self.rows_logged = Counter(
            "lakeserve_inference_rows_logged", "Rows appended to the inference table", per_batch, registry=registry
        )
        self.retries = Counter(
            "lakeserve_component_retries", "Attempts retried after a component failed (consumption paused)",
            ["endpoint", "component"], registry=registry,
        )  # fmt: skip
        self.dropped = Counter(
            "lakeserve_requests_dropped", "Requests dropped unscored: caller gone or past its deadline",
            per_batch, registry=registry,
        )  # fmt: skip
        self.queued = Gauge("lakeserve_http_queued", "REST requests waiting for the scorer", ["endpoint"],
                            registry=registry)  # fmt: skip
        self.outage_seconds = Counter(
            "lakeserve_component_outage_seconds", "Seconds a component failed before it answered again",
            ["endpoint", "component"], registry=registry,
        )  # fmt: skip

    # -- what the transports report --------------------------------------------------------
    def answered(self, transport: str, result: RequestResult, latency_s: float) -> None:
        """One request answered (any status), ``latency_s`` from arrival to answer."""
        self.record(transport, Outcome.of(result, latency_s))

    def record(self, transport: str, outcome: Outcome) -> None:
        for entity in outcome.entities:
            self._count(transport, entity, outcome.status_code, outcome.error_code, outcome.latency_s)
            labels = (self.endpoint, entity, transport)
            self.model_latency.labels(*labels).observe(outcome.model_s)
            self.overhead.labels(*labels).observe(max(0.0, outcome.latency_s - outcome.model_s))

    def refused(self, transport: str, status_code: int, error_code: str, latency_s: float) -> None:
        """A request answered before it reached the scoring core (too large, unknown endpoint, ...)."""
        self._count(transport, NO_ENTITY, status_code, error_code, latency_s)

    def batch_scored(self, transport: str, results: Sequence[RequestResult]) -> None:
        # the HTTP server reports each request as it answers it; Kafka's are answered with the batch
        outcomes = [] if transport == "http" else [Outcome.of(r, r.timings.total_ms / 1000) for r in results]
        self.batch_recorded(transport, len(results), outcomes)

    def batch_recorded(self, transport: str, size: int, outcomes: Sequence[Outcome]) -> None:
        self.batch_size.labels(self.endpoint, transport).observe(size)
        for outcome in outcomes:
            self.record(transport, outcome)

    def table_flushed(self, transport: str, rows: int, seconds: float) -> None:
        self.flush_delay.labels(self.endpoint, transport).observe(seconds)
        self.rows_logged.labels(self.endpoint, transport).inc(rows)

    def consumer_lag(self, lags: Mapping[Partition, int], reporter: Hashable = None) -> None:
        """The lag of every partition ``reporter`` (a worker) holds now. A partition it reported
        before and holds no more loses its series, unless another reporter holds it: a partition
        moved away is never left at a stale figure."""
        with self._lag_lock:
            before = self._lag_reported.get(reporter, set())
            self._lag_reported[reporter] = set(lags)
            for moved in before - set(lags):
                self._forget_lag(moved)
            for (topic, number), lag in lags.items():
                self.lag.labels(self.endpoint, topic, str(number)).set(lag)

    def reporter_gone(self, reporter: Hashable) -> None:
        """A worker died or stopped: the partitions only it reported lose their series."""
        with self._lag_lock:
            for partition in self._lag_reported.pop(reporter, set()):
                self._forget_lag(partition)

    def _forget_lag(self, partition: Partition) -> None:
        if not any(partition in held for held in self._lag_reported.values()):
            with contextlib.suppress(KeyError):  # never set
                self.lag.remove(self.endpoint, partition[0], str(partition[1]))

    def requests_dropped(self, transport: str, count: int) -> None:
        self.dropped.labels(self.endpoint, transport).inc(count)

    def watch_queue(self, depth: Callable[[], int]) -> None:
        """``lakeserve_http_queued`` reads ``depth()`` at each scrape."""
        self.queued.labels(self.endpoint).set_function(depth)

    def component_retry(self, component: str) -> None:
        self.retries.labels(self.endpoint, component).inc()

    def component_outage(self, component: str, seconds: float) -> None:
        self.outage_seconds.labels(self.endpoint, component).inc(seconds)

    # -- what is read ----------------------------------------------------------------------
    def exposition(self) -> tuple[bytes, str]:
        """The Prometheus text format and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def dashboard(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, **self.window.snapshot()}

    def _count(self, transport: str, entity: str, status: int, error_code: str | None, latency_s: float) -> None:
        labels = (self.endpoint, entity, transport)
        self.requests.labels(*labels, str(status)).inc()
        if status != 200:
            self.errors.labels(*labels, error_code or "UNKNOWN").inc()
        self.latency.labels(*labels).observe(latency_s)
        self.window.add(entity, latency_s * 1000, status == 200)


def _seconds(registry: CollectorRegistry, name: str, doc: str, labels: list[str]) -> Histogram:
    return Histogram(name, doc, labels, buckets=LATENCY_BUCKETS_S, registry=registry)
