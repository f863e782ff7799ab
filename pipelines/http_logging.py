"""HTTP results → the endpoint's inference table, buffered and appended by a background flusher.

Delivery guarantee: **at most once, best effort** — unlike the Kafka path, which logs exactly
once. HTTP has no replayable source, so the rows of answered requests wait in memory
(:class:`~lakeserve.monitoring.row_buffer.RowBuffer`, due by ``tables.flush_rows`` or
``tables.flush_interval_ms``) and are lost if the process dies before the next append. A clean
shutdown flushes them. A failed append is logged and its rows are dropped (counted in the log
line), so a Delta outage never holds answers back or grows memory without bound. The rows have
``transport = "http"`` and null Kafka columns; they carry no Delta transaction id.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from lakeserve.errors import LakeserveError
from lakeserve.monitoring.delta_writer import InferenceTableWriter
from lakeserve.monitoring.row_buffer import RowBuffer
from lakeserve.pipelines.checkpoint import TableTarget
from lakeserve.pipelines.metrics import ServiceMetrics
from lakeserve.scoring.records import RequestResult

log = logging.getLogger(__name__)


class HttpTableLogger:
    """Buffers rows of scored HTTP requests; a daemon thread appends them when due."""

    def __init__(
        self,
        writer: InferenceTableWriter,
        target: TableTarget,
        buffer: RowBuffer,
        metrics: ServiceMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        check_every_s: float = 0.05,
    ) -> None:
        self.writer, self.target, self.buffer, self.metrics, self.clock = writer, target, buffer, metrics, clock
        self.check_every_s = check_every_s
        self.rows_logged = 0
        self.rows_dropped = 0
        self._buffer_lock = threading.Lock()  # add / drain
        self._append_lock = threading.Lock()  # one append at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, results: Sequence[RequestResult]) -> None:
        rows = self.target.rows(results)
        with self._buffer_lock:
            self.buffer.add(rows, {})

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
        """Append everything buffered now; returns the rows appended."""
        with self._append_lock:
            with self._buffer_lock:
                if self.buffer.empty:
                    return 0
                rows, _ = self.buffer.drain()
            started = self.clock()
            try:
                self.writer.append(rows, {})
            except LakeserveError as exc:
                self.rows_dropped += rows.num_rows
                log.error("inference table append failed, %d HTTP rows dropped: %s", rows.num_rows, exc)
                return 0
            self.rows_logged += rows.num_rows
            if self.metrics is not None:
                self.metrics.table_flushed("http", rows.num_rows, self.clock() - started)
            return int(rows.num_rows)

    def _run(self) -> None:
        while not self._stop.wait(self.check_every_s):
            with self._buffer_lock:
                due = self.buffer.due()
            if due:
                self.flush()
