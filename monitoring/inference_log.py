"""The inference log: scored results into the inference table, each source position exactly once.

This module is the one owner of the bookkeeping behind the Kafka path's guarantee. The delivery
loop (:mod:`lakeserve.pipelines.delivery_loop`) only calls, in this order:

- :meth:`InferenceLog.resume` when the group assigns partitions: the table's transaction version
  of each (its last logged offset) is read back;
- :meth:`InferenceLog.fresh` on every polled micro-batch: records of partitions this log does
  not own, records the table (or the buffer) already holds, and a record fetched twice are left
  out;
- :meth:`InferenceLog.add` with the results once they are answered;
- :meth:`InferenceLog.flush` when :meth:`InferenceLog.due`: ONE Delta commit holding the buffered
  rows and, per partition, the last buffered offset as a Delta transaction (app id, version);
  it returns the Kafka positions that may now be committed, and
  :meth:`InferenceLog.committed` once they are;
- :meth:`InferenceLog.release` when partitions are revoked.

What holds, whatever fails:

1. A position is returned for commit only once every record before it is in the table: it is
   ``logged + 1``, where ``logged`` is the partition's transaction version in the table.
2. A failed append keeps its rows and offsets; the next flush tries them again. Nothing here
   ever returns positions after a failed append.
3. Transaction versions never move backwards. Before each append the table's versions are read
   again; rows at or below a partition's version were logged by another owner meanwhile (a
   zombie: the partition moved during a slow batch) and are dropped, and a partition whose
   version is already ahead writes no transaction.
4. A commit conflict (another writer committed first, or widened the schema) is tried again,
   with the check of 3 done again, up to ``conflict_retries`` times.
5. Topic identity is part of the app id (:func:`app_id`): a topic deleted and created again,
   or the same name on another cluster, has another id, so the old topic's versions never hide
   the new topic's records.

Rows without a source position (REST answers) are buffered and appended the same way, with no
transaction: they are logged at most once, best effort.

With ``auto_capture_config.enabled: false`` there is no table: :class:`AnswerLog` takes the same
calls (:class:`PositionLog`) and keeps only the answered positions, which the loop commits to
Kafka; answers stay at-least-once and no row is written anywhere.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import pyarrow as pa
import pyarrow.compute as pc

from lakeserve.errors import CommitConflict, ComponentError, ConfigError
from lakeserve.monitoring.delta_writer import InferenceTableWriter
from lakeserve.monitoring.inference_rows import RowFormat
from lakeserve.scoring.records import RequestResult, ScoringRequest

log = logging.getLogger(__name__)

Partition = tuple[str, int]  # (topic, partition)
MonotonicClock = Callable[[], float]  # seconds, like time.monotonic

_TOPIC = re.compile(r"^[A-Za-z0-9._-]+$")  # Kafka's legal topic characters


def app_id(group_id: str, topic: str, partition: int, topic_id: str | None = None) -> str:
    """The Delta transaction app id of one consumer group's position in one partition.

    ``lakeserve/kafka/<group_id>/<topic>#<topic_id>/<partition>``, e.g.
    ``lakeserve/kafka/scorers/fraud-requests#9f3c.../3``; without a known topic id,
    ``lakeserve/kafka/<group_id>/<topic>/<partition>``. Topic names cannot hold ``/`` or ``#``
    and the partition is a number, so the id splits unambiguously from the right even when the
    group id holds slashes.
    """
    if not group_id:
        raise ConfigError("app_id: group_id must not be empty")
    if not _TOPIC.match(topic):
        raise ConfigError(f"app_id: {topic!r} is not a Kafka topic name")
    if partition < 0:
        raise ConfigError(f"app_id: partition must be >= 0, got {partition}")
    identity = f"{topic}#{topic_id}" if topic_id else topic
    return f"lakeserve/kafka/{group_id}/{identity}/{partition}"


def partition_of(request: ScoringRequest) -> Partition | None:
    """The source partition of a request, or None when it has no replayable position."""
    origin = request.origin
    if origin.topic is None or origin.partition is None or origin.offset is None:
        return None
    return origin.topic, origin.partition


@dataclass
class LogStats:
    rows_logged: int = 0
    flushes: int = 0
    skipped_logged: int = 0  # records the table (or the buffer) already held
    dropped_not_owned: int = 0  # records of partitions revoked meanwhile: the new owner reads them
    rows_dropped_as_logged: int = 0  # rows another owner had logged (zombie guard)
    rows_dropped_revoked: int = 0  # buffered rows of partitions revoked before they could be appended
    rows_dropped_overflow: int = 0  # rows without a position dropped beyond ``max_buffered_rows``
    commit_conflicts: int = 0
    failed_appends: int = 0


@dataclass
class _Partition:
    """What the log knows of one owned partition."""

    app_id: str
    logged: int  # last offset in the table (-1: none)
    buffered: int  # last offset whose rows wait in the buffer (-1: none)
    reported: int  # last position returned for commit and confirmed (-1: none)


@dataclass
class _Buffer:
    tables: dict[Partition | None, list[pa.Table]] = field(default_factory=dict)
    rows: int = 0
    since: float | None = None  # when the oldest waiting item arrived


class InferenceLog:
    """Buffers rows of answered results and appends them with their positions; see the module doc."""

    def __init__(
        self,
        writer: InferenceTableWriter,
        row_format: RowFormat,
        group_id: str,
        *,
        flush_rows: int,
        flush_interval_ms: int,
        clock: MonotonicClock,
        conflict_retries: int = 10,
        max_buffered_rows: int = 1_000_000,
    ) -> None:
        if flush_rows < 1 or flush_interval_ms < 0:
            raise ConfigError(f"need flush_rows >= 1 and flush_interval_ms >= 0, got {flush_rows}, {flush_interval_ms}")
        self.writer, self.row_format, self.group_id = writer, row_format, group_id
        self._flush_rows, self._flush_interval_s, self._clock = flush_rows, flush_interval_ms / 1000, clock
        self._conflict_retries, self._max_buffered_rows = conflict_retries, max_buffered_rows
        self.stats = LogStats()
        self._owned: dict[Partition, _Partition] = {}
        self._buffer = _Buffer()
        # kafka-python may call the rebalance callbacks (resume, release) while the loop is
        # between steps: one lock over the buffer and the partition states.
        self._lock = threading.RLock()

    # -- ownership -------------------------------------------------------------------------
    def resume(self, partitions: Mapping[Partition, str | None]) -> dict[Partition, int]:
        """Own ``partitions`` (each with its topic id, None when unknown); returns the last
        offset the table holds for each (-1 for none): the source resumes after it."""
        ids = {p: app_id(self.group_id, p[0], p[1], topic_id) for p, topic_id in partitions.items()}
        versions = self.writer.transaction_versions(ids.values()) if ids else {}
        with self._lock:
            for p, app in ids.items():
                version = versions.get(app)
                logged = -1 if version is None else version
                self._owned[p] = _Partition(app, logged, -1, -1)
            return {p: self._owned[p].logged for p in ids}

    def release(self, partitions: Iterable[Partition]) -> None:
        """Forget ``partitions`` (revoked): their unappended rows are dropped, the next owner
        replays and logs them. Call :meth:`flush` first to append what can be appended."""
        with self._lock:
            for p in partitions:
                if self._owned.pop(p, None) is None:
                    continue
                dropped = self._buffer.tables.pop(p, [])
                rows = sum(t.num_rows for t in dropped)
                self._buffer.rows -= rows
                self.stats.rows_dropped_revoked += rows
            if self._buffer.rows == 0 and not any(self._buffer.tables.values()):
                self._buffer.since = None

    def owns(self, partition: Partition) -> bool:
        with self._lock:
            return partition in self._owned

    def owned(self) -> list[Partition]:
        with self._lock:
            return sorted(self._owned)

    def logged(self) -> dict[Partition, int]:
        """The last offset in the table per owned partition (-1: none)."""
        with self._lock:
            return {p: s.logged for p, s in self._owned.items()}

    # -- the batch path --------------------------------------------------------------------
    def fresh(self, requests: Sequence[ScoringRequest]) -> list[ScoringRequest]:
        """The requests still to score: owned, not in the table or the buffer, each once."""
        fresh: list[ScoringRequest] = []
        high: dict[Partition, int] = {}
        with self._lock:
            for r in requests:
                p = partition_of(r)
                if p is None:
                    fresh.append(r)
                    continue
                state = self._owned.get(p)
                if state is None:
                    self.stats.dropped_not_owned += 1
                    continue
                offset = int(r.origin.offset)  # type: ignore[arg-type]  # partition_of checked it
                if offset <= max(state.logged, state.buffered, high.get(p, -1)):
                    self.stats.skipped_logged += 1  # logged before a crash, or fetched twice
                    continue
                high[p] = offset
                fresh.append(r)
        return fresh

    def add(self, results: Sequence[RequestResult]) -> None:
        """Buffer the rows of answered ``results``; their positions become due with them.

        Results of partitions no longer owned are left out (the new owner logs them)."""
        groups: dict[Partition | None, list[RequestResult]] = {}
        for result in results:
            groups.setdefault(partition_of(result.request), []).append(result)
        with self._lock:
            for p, group in groups.items():
                state = self._owned.get(p) if p is not None else None
                if p is not None and state is None:
                    self.stats.dropped_not_owned += len(group)
                    continue
                rows = self.row_format.rows(group)
                if state is not None:
                    state.buffered = max(state.buffered, *(int(r.request.origin.offset or 0) for r in group))
                self._buffer.tables.setdefault(p, []).append(rows)
                self._buffer.rows += rows.num_rows
                if self._buffer.since is None:
                    self._buffer.since = self._clock()
            self._shed_overflow()

    def due(self) -> bool:
        """True once ``flush_rows`` rows wait, the oldest waited ``flush_interval_ms``, or a
        position can be committed without an append (records skipped as already logged)."""
        with self._lock:
            if self._buffer.since is not None and (
                self._buffer.rows >= self._flush_rows or self._clock() - self._buffer.since >= self._flush_interval_s
            ):
                return True
            return any(s.logged > s.reported for s in self._owned.values())

    @property
    def waiting_rows(self) -> int:
        with self._lock:
            return self._buffer.rows

    def flush(self) -> dict[Partition, int]:
        """Append everything buffered in one commit; returns ``{partition: next offset}`` to commit.

        Raises :class:`~lakeserve.errors.ComponentError` when the append fails (after the commit
        conflicts were retried); the rows and offsets are kept for the next flush."""
        with self._lock:
            pending = {p: s.buffered for p, s in self._owned.items() if s.buffered > s.logged}
            tables = [t for group in self._buffer.tables.values() for t in group]
            if tables or pending:
                self._append(tables, pending)
            for p in pending:
                state = self._owned[p]
                state.logged = max(state.logged, state.buffered)
            self._buffer = _Buffer()
            return {p: s.logged + 1 for p, s in self._owned.items() if s.logged > s.reported}

    def committed(self, positions: Mapping[Partition, int]) -> None:
        """The source committed ``positions`` (as returned by :meth:`flush`)."""
        with self._lock:
            for p, position in positions.items():
                state = self._owned.get(p)
                if state is not None:
                    state.reported = max(state.reported, position - 1)

    # -- helpers ---------------------------------------------------------------------------
    def _append(self, tables: list[pa.Table], pending: dict[Partition, int]) -> None:
        rows = pa.concat_tables(tables, promote_options="default") if tables else None
        for attempt in range(self._conflict_retries + 1):
            current = self.writer.transaction_versions([self._owned[p].app_id for p in pending])
            kept, versions = self._not_logged_elsewhere(rows, pending, current)
            try:
                if kept is not None or versions:
                    self.writer.append(kept if kept is not None else self.row_format.schema.empty_table(), versions)
            except CommitConflict as exc:
                self.stats.commit_conflicts += 1
                log.info("inference table commit conflict (attempt %d), trying again: %s", attempt + 1, exc)
                continue
            except ComponentError:
                self.stats.failed_appends += 1
                raise
            self.stats.rows_logged += 0 if kept is None else kept.num_rows
            self.stats.flushes += 1
            return
        self.stats.failed_appends += 1
        raise ComponentError("delta", f"{self._conflict_retries + 1} commits in a row met a conflicting commit")

    def _not_logged_elsewhere(
        self, rows: pa.Table | None, pending: dict[Partition, int], current: Mapping[str, int | None]
    ) -> tuple[pa.Table | None, dict[str, int]]:
        """The rows and versions to append, without what another owner logged meanwhile."""
        versions: dict[str, int] = {}
        for p, buffered in pending.items():
            state = self._owned[p]
            table_version = current.get(state.app_id)
            if table_version is not None and table_version > state.logged:
                log.warning("%s/%d was logged up to %d by another owner; dropping those rows", *p, table_version)
                state.logged = table_version
                if rows is not None:
                    rows = self._drop_logged(rows, p, table_version)
            if buffered > state.logged:
                versions[state.app_id] = buffered
        return rows, versions

    def _drop_logged(self, rows: pa.Table, p: Partition, version: int) -> pa.Table:
        stale = pc.and_(
            pc.and_(pc.equal(rows["kafka_topic"], p[0]), pc.equal(rows["kafka_partition"], p[1])),
            pc.less_equal(rows["kafka_offset"], version),
        )
        stale = pc.fill_null(stale, False)
        n = pc.sum(pc.cast(stale, pa.int64())).as_py() or 0
        self.stats.rows_dropped_as_logged += n
        return rows.filter(pc.invert(stale)) if n else rows

    def _shed_overflow(self) -> None:
        """Rows without a position (REST) beyond ``max_buffered_rows`` are dropped, oldest first,
        so an outage of the table cannot grow memory without bound; Kafka rows never are (the
        delivery loop stops consuming while the table is down)."""
        unpositioned = self._buffer.tables.get(None, [])
        while self._buffer.rows > self._max_buffered_rows and unpositioned:
            dropped = unpositioned.pop(0)
            self._buffer.rows -= dropped.num_rows
            self.stats.rows_dropped_overflow += dropped.num_rows
            log.error("inference table unavailable: %d REST rows dropped (buffer full)", dropped.num_rows)


class PositionLog(Protocol):
    """What the delivery loop asks of the log between answering and committing (see the module
    doc for the call order): :class:`InferenceLog` with an inference table, :class:`AnswerLog`
    without one (``auto_capture_config.enabled: false``)."""

    stats: LogStats

    def resume(self, partitions: Mapping[Partition, str | None]) -> dict[Partition, int]: ...
    def release(self, partitions: Iterable[Partition]) -> None: ...
    def owns(self, partition: Partition) -> bool: ...
    def owned(self) -> list[Partition]: ...
    def fresh(self, requests: Sequence[ScoringRequest]) -> list[ScoringRequest]: ...
    def add(self, results: Sequence[RequestResult]) -> None: ...
    def due(self) -> bool: ...
    @property
    def waiting_rows(self) -> int: ...
    def flush(self) -> dict[Partition, int]: ...
    def committed(self, positions: Mapping[Partition, int]) -> None: ...


class AnswerLog:
    """The position log of an endpoint without an inference table: answered positions, no rows.

    There is no table to hold the offsets as Delta transactions, so Kafka's committed offsets
    are the only record of progress: a position is returned for commit once every record before
    it was answered (and the broker acknowledged the answer), and a new owner resumes at the
    group's committed offset. Answers stay at-least-once, as with a table: records answered
    after the last commit are answered again by the next owner, under the same request ids.
    Nothing is ever written to a table. Commits are batched like the table's appends: due once
    ``flush_rows`` answers wait or the oldest waited ``flush_interval_ms``.
    """

    def __init__(self, *, flush_rows: int, flush_interval_ms: int, clock: MonotonicClock) -> None:
        if flush_rows < 1 or flush_interval_ms < 0:
            raise ConfigError(f"need flush_rows >= 1 and flush_interval_ms >= 0, got {flush_rows}, {flush_interval_ms}")
        self._flush_rows, self._flush_interval_s, self._clock = flush_rows, flush_interval_ms / 1000, clock
        self.stats = LogStats()  # rows_logged stays 0: nothing is logged
        self._answered: dict[Partition, int] = {}  # owned partition -> last answered offset (-1: none)
        self._reported: dict[Partition, int] = {}  # owned partition -> last offset committed (-1: none)
        self._waiting = 0  # answers not flushed yet
        self._since: float | None = None  # when the oldest of them was answered
        self._lock = threading.RLock()  # rebalance callbacks may run between the loop's steps

    def resume(self, partitions: Mapping[Partition, str | None]) -> dict[Partition, int]:
        """Own ``partitions``; nothing is known to be done: the source starts at the group's offset."""
        with self._lock:
            for p in partitions:
                self._answered[p] = self._reported[p] = -1
            return dict.fromkeys(partitions, -1)

    def release(self, partitions: Iterable[Partition]) -> None:
        with self._lock:
            for p in partitions:
                self._answered.pop(p, None)
                self._reported.pop(p, None)

    def owns(self, partition: Partition) -> bool:
        with self._lock:
            return partition in self._answered

    def owned(self) -> list[Partition]:
        with self._lock:
            return sorted(self._answered)

    def fresh(self, requests: Sequence[ScoringRequest]) -> list[ScoringRequest]:
        """Owned requests not answered yet by this owner (a record fetched twice is answered once)."""
        fresh: list[ScoringRequest] = []
        with self._lock:
            high = dict(self._answered)
            for r in requests:
                p = partition_of(r)
                if p is None:
                    fresh.append(r)
                elif p not in high:
                    self.stats.dropped_not_owned += 1
                elif int(r.origin.offset or 0) <= high[p]:
                    self.stats.skipped_logged += 1
                else:
                    high[p] = int(r.origin.offset or 0)
                    fresh.append(r)
        return fresh

    def add(self, results: Sequence[RequestResult]) -> None:
        """``results`` were answered: their positions may be committed."""
        with self._lock:
            for result in results:
                p = partition_of(result.request)
                if p is None or p not in self._answered:
                    continue
                self._answered[p] = max(self._answered[p], int(result.request.origin.offset or 0))
                self._waiting += 1
                if self._since is None:
                    self._since = self._clock()

    def due(self) -> bool:
        """True once ``flush_rows`` answers wait, the oldest waited ``flush_interval_ms``, or a
        flushed position is not committed yet (its commit failed)."""
        with self._lock:
            if self._since is None:
                return any(a > self._reported[p] for p, a in self._answered.items())
            return self._waiting >= self._flush_rows or self._clock() - self._since >= self._flush_interval_s

    @property
    def waiting_rows(self) -> int:
        return 0  # no rows: nothing goes to a table

    def flush(self) -> dict[Partition, int]:
        """``{partition: next offset}`` for every partition answered past its last commit."""
        with self._lock:
            self._waiting, self._since = 0, None
            return {p: a + 1 for p, a in self._answered.items() if a > self._reported[p]}

    def committed(self, positions: Mapping[Partition, int]) -> None:
        with self._lock:
            for p, position in positions.items():
                if p in self._reported:
                    self._reported[p] = max(self._reported[p], position - 1)
