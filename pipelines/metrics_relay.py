"""Worker metrics across processes: what a Kafka worker process reports reaches the one
:class:`~lakeserve.pipelines.metrics.ServiceMetrics` of ``lakeserve serve``, so its ``/metrics``
(the metrics endpoint's, :mod:`lakeserve.pipelines.metrics_server`, and the REST server's) and
dashboard show the workers' requests, batch sizes, consumer lag, table flushes, retries and outages.

A worker's :class:`MetricsRelay` implements the delivery loop's ``LoopMetrics`` hook: it turns each
event into a small picklable tuple, queues it, and a sender thread writes it to the worker's
report pipe; the supervisor's reader thread hands it to :func:`apply`. The loop never waits on
the pipe: past ``max_pending`` queued events, new ones are dropped and counted.

Why not prometheus_client's multiprocess mode: it covers the Prometheus series only, not the
dashboard's rolling window; it needs an environment variable set before the library is imported
in every process and a directory cleaned at each start; and its values live in process-wide
files rather than in the injected registry. The supervisor already holds a pipe to each worker.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

from lakeserve.pipelines.metrics import Outcome, Partition, ServiceMetrics
from lakeserve.scoring.records import RequestResult

log = logging.getLogger(__name__)

SCORED, FLUSHED, LAG, RETRY, OUTAGE = "scored", "flushed", "lag", "retry", "outage"
Event = tuple[Any, ...]


class MetricsRelay:
    """``LoopMetrics`` for a worker process: forwards compact events through ``send``."""

    def __init__(self, send: Callable[[Event], None], max_pending: int = 10_000) -> None:
        self._send = send
        self._queue: queue.Queue[Event] = queue.Queue(maxsize=max_pending)
        self.dropped = 0
        threading.Thread(target=self._forward, name="metrics-relay", daemon=True).start()

    def batch_scored(self, transport: str, results: Sequence[RequestResult]) -> None:
        outcomes = [Outcome.of(r, r.timings.total_ms / 1000) for r in results]
        self._put((SCORED, transport, len(results), outcomes))

    def table_flushed(self, transport: str, rows: int, seconds: float) -> None:
        self._put((FLUSHED, transport, rows, seconds))

    def consumer_lag(self, lags: Mapping[Partition, int]) -> None:
        self._put((LAG, dict(lags)))

    def component_retry(self, component: str) -> None:
        self._put((RETRY, component))

    def component_outage(self, component: str, seconds: float) -> None:
        self._put((OUTAGE, component, seconds))

    def _put(self, event: Event) -> None:
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.dropped += 1
            if self.dropped % 1000 == 1:
                log.warning("metrics relay is behind; %d events dropped so far", self.dropped)

    def _forward(self) -> None:
        while True:
            event = self._queue.get()
            try:
                self._send(event)
            except OSError:  # the supervisor is gone; the worker is stopping
                return


def apply(metrics: ServiceMetrics, event: Event, reporter: Hashable = None) -> None:
    """Record a worker's event in the supervisor's metrics (``reporter``: the worker's slot)."""
    kind = event[0]
    if kind == SCORED:
        _, transport, size, outcomes = event
        metrics.batch_recorded(transport, size, outcomes)
    elif kind == FLUSHED:
        _, transport, rows, seconds = event
        metrics.table_flushed(transport, rows, seconds)
    elif kind == LAG:
        metrics.consumer_lag(event[1], reporter)
    elif kind == RETRY:
        metrics.component_retry(event[1])
    elif kind == OUTAGE:
        metrics.component_outage(event[1], event[2])
    else:
        log.warning("unknown metrics event %r from a worker", kind)
