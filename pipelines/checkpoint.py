"""The delivery loop: the one place where the order of delivery is decided.

For every micro-batch, in this order and only here:

1. **poll** a micro-batch from the request source; drop records of partitions this worker no
   longer owns and records already in the inference table (offset ≤ the partition's Delta
   transaction version, read back when the partition was assigned);
2. **score** it with the transport-free core (bad input becomes error results, never raises);
3. **answer**: produce answers and dead letters, then **flush** the producer — answers are
   at-least-once: a crash after this step answers the same requests again on replay, under
   the same request ids;
4. **buffer** the inference rows with, per partition, the last offset they cover;
5. when the buffer is due (``tables.flush_rows`` rows or ``tables.flush_interval_ms``), or the
   partitions are being revoked, or the loop stops: **append** the rows to Delta in ONE commit
   that also records each partition's offset as a Delta transaction (app id, version), then
   **commit** the Kafka offsets. Rows are therefore written exactly once: a crash between the
   Delta commit and the offset commit replays records whose offsets the table already holds,
   and step 1 skips them.

Before appending, the loop reads the transaction versions again and drops rows another worker
logged meanwhile (a partition moved during a slow batch), so a zombie cannot log twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from lakeserve.monitoring.delta_writer import InferenceTableWriter, app_id
from lakeserve.monitoring.inference_rows import to_arrow
from lakeserve.monitoring.row_buffer import RowBuffer
from lakeserve.pipelines.kafka_sinks import ResponseSink
from lakeserve.pipelines.kafka_source import Partition, RebalanceHandler, RequestSource
from lakeserve.scoring.records import RequestResult, ScoringRequest

if TYPE_CHECKING:
    from lakeserve.pipelines.metrics import LoopMetrics

log = logging.getLogger(__name__)

Scorer = Callable[[Sequence[ScoringRequest]], list[RequestResult]]


@dataclass(frozen=True)
class TableTarget:
    """How results become rows: the table's schema and the endpoint's logging settings."""

    schema: pa.Schema
    endpoint_name: str
    sampling_fraction: float
    payload_cap_bytes: int

    def rows(self, results: Sequence[RequestResult]) -> pa.Table:
        return to_arrow(results, self.schema, self.endpoint_name, self.sampling_fraction, self.payload_cap_bytes)


@dataclass
class LoopStats:
    batches: int = 0
    requests: int = 0
    skipped_logged: int = 0
    dropped_revoked: int = 0
    errors: int = 0
    flushes: int = 0
    rows_logged: int = 0
    rows_dropped_as_logged: int = 0
    consumers_replaced: int = 0
    revocations: int = 0  # rebalances that took partitions from this worker
    last_flush_delay_s: float = 0.0
    by_status: dict[int, int] = field(default_factory=dict)


class DeliveryLoop(RebalanceHandler):
    """Runs steps 1-5 above; ``run_once`` for one micro-batch, ``run`` until stopped."""

    def __init__(
        self,
        make_source: Callable[[RebalanceHandler], RequestSource],
        score: Scorer,
        sink: ResponseSink,
        writer: InferenceTableWriter,
        target: TableTarget,
        buffer: RowBuffer,
        group_id: str,
        before_batch: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        metrics: LoopMetrics | None = None,
        rejoin_timeout_s: float = 60.0,
    ) -> None:
        self.metrics = metrics  # optional hook: told after each scored batch and each flush
        self.score, self.sink, self.writer, self.target = score, sink, writer, target
        self.buffer, self.group_id, self.before_batch, self.clock = buffer, group_id, before_batch, clock
        self.logged: dict[Partition, int] = {}  # last offset in the table (or scored), per owned partition
        self.positions: dict[Partition, int] = {}  # next offset to commit once the buffer is in Delta
        self.stats = LoopStats()
        self.on_assigned: Callable[[], None] = lambda: None  # readiness hook for supervisors and tests
        self.rejoin_timeout_s = rejoin_timeout_s
        self._make_source = make_source
        self._revoked_at: float | None = None  # set by a revoke, cleared by the next assignment
        # Guards the buffer and the offsets: kafka-python runs the revoke callback (a flush) on its
        # IO thread, possibly while this loop is between steps or flushing itself.
        self._lock = threading.Lock()
        self.source = make_source(self)

    # -- rebalance -------------------------------------------------------------------------
    def assigned(self, partitions: list[Partition]) -> None:
        for p in partitions:
            version = self.writer.transaction_version(self._app_id(p))
            self.logged[p] = -1 if version is None else version
        log.info("assigned %s; already logged up to %s", partitions, {p: self.logged[p] for p in partitions})
        self._revoked_at = None
        if partitions:
            self.on_assigned()

    def revoked(self, partitions: list[Partition]) -> None:
        # Runs on the consumer's IO thread: rows and txn versions go to Delta now (so the next
        # owner skips them), the offset commit is sent without waiting for it.
        self.flush(wait=False)
        for p in partitions:
            self.logged.pop(p, None)
        self._revoked_at = self.clock()
        self.stats.revocations += bool(partitions)
        log.info("revoked %s", partitions)

    # -- the loop --------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                self.run_once()
        finally:
            self.flush()
            self.source.close()
            self.sink.close()

    def run_once(self) -> int:
        """One micro-batch through steps 1-5; returns the number of requests scored."""
        self.before_batch()
        self._replace_stalled_consumer()
        polled = self.source.poll()  # 1
        with self._lock:
            fresh = self._fresh(polled)
        if fresh:
            results = self.score(fresh)  # 2
            self.sink.send(results)  # 3
            self.sink.flush()
            rows = self.target.rows(results)
            with self._lock:
                self.buffer.add(rows, self._versions(fresh))  # 4
            self._count(results)
            if self.metrics is not None:
                self.metrics.batch_scored("kafka", results)
        if self.buffer.due(self.clock()) or (self.positions and self.buffer.empty):
            self.flush()  # 5
        return len(fresh)

    def flush(self, *, wait: bool = True) -> None:
        """Step 5: rows and their offsets into Delta in one commit, then Kafka offsets.

        Safe from two threads at once (the loop and a revoke): one drains and appends, the other
        finds nothing left. The Kafka commit is sent after the lock is released, since a
        synchronous commit needs the consumer's IO thread, which may be waiting for the lock."""
        with self._lock:
            if self.buffer.empty and not self.positions:
                return
            started = self.clock()
            rows, versions = self.buffer.drain()
            if rows.num_rows or versions:
                rows = self._not_logged_elsewhere(rows)
                self.writer.append(rows, versions)
                self.stats.rows_logged += rows.num_rows
            positions, self.positions = self.positions, {}
        self.source.commit(positions, wait=wait)
        self.stats.flushes += 1
        self.stats.last_flush_delay_s = self.clock() - started
        if self.metrics is not None:
            self.metrics.table_flushed("kafka", rows.num_rows, self.stats.last_flush_delay_s)

    # -- helpers ---------------------------------------------------------------------------
    def _replace_stalled_consumer(self) -> None:
        """A rebalance that never ends (revoked, never assigned again within ``rejoin_timeout_s``)
        gets a fresh consumer: kafka-python 3 has been seen to stall after the leader's SyncGroup
        and be expelled from the group, idling forever. Nothing is buffered after a revoke."""
        if self._revoked_at is None or self.clock() - self._revoked_at < self.rejoin_timeout_s:
            return
        log.warning(
            "no partitions assigned %.0f s after a revoke; replacing the consumer of group %s",
            self.clock() - self._revoked_at,
            self.group_id,
        )
        self.flush()
        self.source.close()
        self._revoked_at = self.clock()  # the new consumer gets the same time to join
        self.source = self._make_source(self)
        self.stats.consumers_replaced += 1

    def _fresh(self, requests: list[ScoringRequest]) -> list[ScoringRequest]:
        fresh = []
        seen: set[tuple[Partition, int]] = set()
        for r in requests:
            p = (r.origin.topic or "", r.origin.partition or 0)
            offset = r.origin.offset if r.origin.offset is not None else -1
            if p not in self.logged:
                self.stats.dropped_revoked += 1  # revoked mid-batch: the new owner reads it
                continue
            self.positions[p] = max(self.positions.get(p, 0), offset + 1)
            if offset <= self.logged[p]:
                self.stats.skipped_logged += 1  # answered and logged before a crash
                continue
            if (p, offset) in seen:
                # a rebalance inside one poll re-fetched from the committed offset: same record twice
                self.stats.skipped_logged += 1
                continue
            seen.add((p, offset))
            fresh.append(r)
        return fresh

    def _versions(self, requests: Sequence[ScoringRequest]) -> dict[str, int]:
        versions: dict[str, int] = {}
        for r in requests:
            p = (r.origin.topic or "", r.origin.partition or 0)
            offset = r.origin.offset if r.origin.offset is not None else -1
            self.logged[p] = max(self.logged.get(p, -1), offset)
            versions[self._app_id(p)] = max(versions.get(self._app_id(p), -1), offset)
        return versions

    def _not_logged_elsewhere(self, rows: pa.Table) -> pa.Table:
        """Drop rows whose partition another worker has logged past meanwhile (zombie guard)."""
        if rows.num_rows == 0:
            return rows
        for topic, partition in _partitions_of(rows):
            current = self.writer.transaction_version(self._app_id((topic, partition)))
            if current is None:
                continue
            stale = pc.and_(
                pc.and_(pc.equal(rows["kafka_topic"], topic), pc.equal(rows["kafka_partition"], partition)),
                pc.less_equal(rows["kafka_offset"], current),
            )
            n = pc.sum(pc.cast(stale, pa.int64())).as_py() or 0
            if n:
                self.stats.rows_dropped_as_logged += n
                rows = rows.filter(pc.invert(stale))
        return rows

    def _count(self, results: Sequence[RequestResult]) -> None:
        self.stats.batches += 1
        self.stats.requests += len(results)
        for r in results:
            self.stats.by_status[r.status_code] = self.stats.by_status.get(r.status_code, 0) + 1
            self.stats.errors += not r.ok

    def _app_id(self, p: Partition) -> str:
        return app_id(self.group_id, p[0], p[1])


def _partitions_of(rows: pa.Table) -> list[Partition]:
    pairs = rows.select(["kafka_topic", "kafka_partition"]).group_by(["kafka_topic", "kafka_partition"]).aggregate([])
    return [
        (t, n)
        for t, n in zip(pairs["kafka_topic"].to_pylist(), pairs["kafka_partition"].to_pylist(), strict=True)
        if t is not None and n is not None
    ]
