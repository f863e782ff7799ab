"""HTTP results → the endpoint's inference table, through the same inference log as Kafka's.

Delivery guarantee: **at most once, best effort** — unlike the Kafka path, which logs exactly
once. HTTP has no replayable source: the rows of answered requests wait in the
:class:`~lakeserve.monitoring.inference_log.InferenceLog` (due by ``tables.flush_rows`` or
``tables.flush_interval_ms``) and a background thread appends them. A failed append keeps them
for the next try; while the table is down at most ``tables.max_buffered_rows`` wait, and older
ones are dropped and counted, so an outage never holds answers back or grows memory without
bound. Rows still waiting when the process dies are lost; a clean shutdown appends them. The rows
have ``transport = "http"`` and null Kafka columns; they carry no Delta transaction.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from lakeserve.errors import LakeserveError
from lakeserve.monitoring.inference_log import InferenceLog
from lakeserve.pipelines.metrics import ServiceMetrics
from lakeserve.scoring.records import RequestResult

log = logging.getLogger(__name__)


class HttpTableLogger:
    """Adds scored HTTP requests to the inference log; a daemon thread appends them when due."""

    def __init__(
        self,
        inference_log: InferenceLog,
        metrics: ServiceMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        check_every_s: float = 0.05,
    ) -> None:
        self.log, self.metrics, self.clock, self.check_every_s = inference_log, metrics, clock, check_every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing_since: float | None = None

    @property
    def rows_logged(self) -> int:
        return self.log.stats.rows_logged

    @property
    def rows_dropped(self) -> int:
        return self.log.stats.rows_dropped_overflow

    def add(self, results: Sequence[RequestResult]) -> None:
        self.log.add(results)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="http-table-flusher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the flusher and append what is left (the clean-shutdown flush)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.flush()

    def flush(self) -> int:
        """Append everything waiting now; returns the rows appended (0 when the append failed)."""
        started, rows = self.clock(), self.log.waiting_rows
        if rows == 0:
            return 0
        try:
            self.log.flush()
        except LakeserveError as exc:
            if self._failing_since is None:
                self._failing_since = started
                log.error("inference table append failed; %d HTTP rows wait for the next try: %s", rows, exc)
            if self.metrics is not None:
                self.metrics.component_retry("delta")
            return 0
        if self._failing_since is not None:
            log.warning("inference table appends work again after %.1f s", started - self._failing_since)
            if self.metrics is not None:
                self.metrics.component_outage("delta", started - self._failing_since)
            self._failing_since = None
        if self.metrics is not None:
            self.metrics.table_flushed("http", rows, self.clock() - started)
        return rows

    def _run(self) -> None:
        while not self._stop.wait(self.check_every_s):
            if self.log.due():
                self.flush()
