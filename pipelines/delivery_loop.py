"""The delivery loop: the one place where the order of delivery is decided.

For every micro-batch, in this order and only here:

1. **poll** a micro-batch from the request source (a record the Kafka client cannot decode
   comes as a request with a ``defect``: it is answered 400 and dead-lettered like bad input);
   the inference log (:mod:`lakeserve.monitoring.inference_log`) leaves out records of
   partitions this worker does not own and records the table already holds;
2. **score** it with the transport-free core (bad input becomes error results, never raises);
3. **answer**: produce answers and dead letters and wait until the broker acknowledged every
   one. Answers are at-least-once: a crash after this step answers the same requests again on
   replay, under the same request ids;
4. **log**: hand the answered results to the inference log, which buffers their rows with the
   offsets they cover;
5. when the log is due (``tables.flush_rows`` rows or ``tables.flush_interval_ms``), when the
   partitions are revoked, or when the loop stops cleanly: the log **appends** the rows and
   each partition's last offset to Delta in ONE commit, then the loop **commits** the Kafka
   offsets the log returned. Only offsets whose records were answered and logged are ever
   committed, so rows are written exactly once.

With ``endpoint.auto_capture_config.enabled: false`` there is no inference table and no row is
written: the log is an :class:`~lakeserve.monitoring.inference_log.AnswerLog`, step 4 only
notes the answered positions and step 5 commits them to Kafka once the answers are
acknowledged (no Delta commit before). Answers are at-least-once as above: the next owner of a
partition resumes at the group's committed offset, so what was answered after the last commit
is answered again, under the same request ids; what was committed is never answered again.

What each failure does (docs/inference-table.md has the table):

- A component the core needs (the Feast online store, a model runtime) raises
  :class:`~lakeserve.errors.ComponentError`: consumption pauses (the consumer stays in its
  group), the same batch is retried with exponential backoff, and once the outage has lasted
  ``kafka.outage_deadline_ms`` the batch and every later one, until the component answers
  again, are answered 503 ``TEMPORARILY_UNAVAILABLE``, dead-lettered and logged.
- The answer producer fails (broker down, a timeout): the unacknowledged answers are sent
  again with backoff until they are acknowledged or the loop stops; nothing is logged or
  committed for them before. An answer the broker refuses for good (over its size limit) is
  replaced by an error answer, which is dead-lettered and logged.
- The Delta append fails: the log keeps the rows and offsets; consumption pauses and the append
  is retried with backoff for as long as the table is down (backpressure, no deadline: the
  service does not consume what it cannot log). Commit conflicts are retried by the log.
- A record kills its worker (a segfault, an out-of-memory kill) again and again: the supervisor
  quarantines it (:mod:`lakeserve.pipelines.crash_guard`); it is answered 500 ``QUARANTINED``,
  dead-lettered and logged without being scored.
- A model call outlives ``limits.timeout_s``: its records are answered 504; the worker then
  flushes, commits and stops, so that its supervisor replaces it (a Python thread stuck in a
  model cannot be killed).
- Anything else raises out of :meth:`DeliveryLoop.run`, which then commits nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from lakeserve.errors import ComponentError, LakeserveError, ServiceUnavailable
from lakeserve.monitoring.inference_log import Partition, PositionLog, partition_of
from lakeserve.pipelines.crash_guard import CrashGuard, Quarantined
from lakeserve.pipelines.kafka_sinks import ResponseSink, Undelivered, undeliverable
from lakeserve.pipelines.kafka_source import RebalanceHandler, RequestSource
from lakeserve.pipelines.metrics import LoopMetrics
from lakeserve.scoring.core import Scorer
from lakeserve.scoring.records import RequestResult, ScoringRequest

log = logging.getLogger(__name__)
Result = TypeVar("Result")
_KILLER = "the record killed the workers that scored it"


@dataclass(frozen=True)
class RetryPolicy:
    """How failing components are retried: exponential backoff, bounded."""

    backoff_initial_s: float = 0.1
    backoff_max_s: float = 5.0
    outage_deadline_s: float = 30.0  # scoring components: then answered 503

    def backoff(self, attempt: int) -> float:
        return float(min(self.backoff_max_s, self.backoff_initial_s * 2**attempt))


class WorkerStalled(ComponentError):
    """A model call never returned; the worker must be replaced."""


class _Stopping(Exception):
    """The stop event was set while a step waited for a component."""


@dataclass
class LoopStats:
    batches: int = 0
    requests: int = 0
    errors: int = 0
    refused_unavailable: int = 0  # answered 503 after an outage outlived its deadline
    undecodable: int = 0  # records the Kafka client could not decode
    answer_retries: int = 0
    scoring_retries: int = 0
    append_retries: int = 0
    consumers_replaced: int = 0
    revocations: int = 0  # rebalances that took partitions from this worker
    by_status: dict[int, int] = field(default_factory=dict)


class DeliveryLoop(RebalanceHandler):
    """Runs steps 1-5 above; ``run_once`` for one micro-batch, ``run`` until stopped."""

    def __init__(
        self,
        make_source: Callable[[RebalanceHandler], RequestSource],
        scorer: Scorer,
        sink: ResponseSink,
        inference_log: PositionLog,
        policy: RetryPolicy,
        *,
        before_batch: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        metrics: LoopMetrics | None = None,
        rejoin_timeout_s: float = 60.0,
        guard: CrashGuard | None = None,
    ) -> None:
        self.scorer, self.sink, self.log, self.policy = scorer, sink, inference_log, policy
        self.guard = guard or CrashGuard()
        self.before_batch, self.clock, self.metrics = before_batch, clock, metrics
        self.rejoin_timeout_s = rejoin_timeout_s
        self.stats = LoopStats()
        self.on_assigned: Callable[[], None] = lambda: None  # readiness hook for supervisors and tests
        self._stop = threading.Event()
        self._outages: dict[str, float] = {}  # component -> when it started failing
        self._unresumed: set[Partition] = set()  # assigned, versions not read back yet
        self._revoked_at: float | None = None  # set by a revoke, cleared by the next assignment
        self._make_source = make_source
        self.source = make_source(self)

    # -- rebalance (called by the source, possibly on the Kafka client's IO thread) --------
    def assigned(self, partitions: list[Partition]) -> None:
        self._unresumed.update(partitions)  # read back in the loop's own thread, before any record
        self._revoked_at = None

    def revoked(self, partitions: list[Partition]) -> None:
        """Append what is buffered (so the next owner skips it) and commit without waiting; rows
        that cannot be appended now are dropped from the log: the next owner replays them."""
        try:
            self._commit(self.log.flush(), wait=False)
        except LakeserveError as exc:
            log.warning("could not log before giving up %s; the next owner replays them: %s", partitions, exc)
        self.log.release(partitions)
        self._unresumed.difference_update(partitions)
        self._revoked_at = self.clock()
        self.stats.revocations += bool(partitions)
        log.info("revoked %s", partitions)

    # -- the loop --------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Micro-batches until ``stop``; then one last append and commit. After an exception
        nothing more is appended or committed: the records are replayed by the next owner."""
        self._stop = stop
        try:
            while not stop.is_set():
                self.run_once()
            self._last_flush()
        except _Stopping:
            self._last_flush()
        finally:
            self.source.close()
            self.sink.close()

    def run_once(self) -> int:
        """One micro-batch through steps 1-5; returns the number of requests scored."""
        self.before_batch()
        self._replace_stalled_consumer()
        if self._unresumed:
            self._resume([])
        polled = self.source.poll()  # 1
        if self._unresumed:  # assigned during this poll
            polled = self._resume(polled)
        fresh = self.log.fresh(polled)
        if fresh:
            quarantined, fresh = self.guard.quarantined(fresh)
            if quarantined:
                self._deliver(self.scorer.refuse(quarantined, Quarantined(_KILLER)))
            for batch in self.guard.batches(fresh):  # a crash's suspects one at a time
                self.guard.in_flight(batch)
                self._deliver(self._score(batch))  # 2
                self.guard.done()
        if self.log.due():
            self.flush()  # 5
        stalled = self.scorer.stalled()
        if stalled is not None:
            self.flush()
            raise WorkerStalled("model", f"{stalled}; the worker stops to be replaced")
        return len(fresh)

    # -- the steps -------------------------------------------------------------------------
    def _deliver(self, results: list[RequestResult]) -> None:
        """Steps 3 and 4: answer, then hand the results as answered to the inference log."""
        if results:
            answered = self._answer(results)
            self.log.add(answered)
            self._count(answered)

    def _resume(self, polled: list[ScoringRequest]) -> list[ScoringRequest]:
        """Read back the table's versions of newly assigned partitions (retrying while the table
        is down). Their records polled before that are rewound, to be fetched again."""
        first: dict[Partition, int] = {}
        kept = []
        for r in polled:
            p = partition_of(r)
            if p is not None and p in self._unresumed:
                first.setdefault(p, int(r.origin.offset or 0))
            else:
                kept.append(r)
        partitions = sorted(self._unresumed)
        identities = self.source.identities(partitions)
        logged = self._retrying("delta", lambda: self.log.resume(identities))
        for p, offset in first.items():
            self.source.seek(p, offset)
        self._unresumed.difference_update(partitions)
        log.info("assigned %s; already logged up to %s", partitions, logged)
        self.on_assigned()
        return kept

    def _score(self, fresh: list[ScoringRequest]) -> list[RequestResult]:
        """Step 2, with component failures retried until ``outage_deadline_s``, then refused."""
        attempt = 0
        while True:
            try:
                results = self.scorer.score(fresh)
            except ComponentError as exc:
                since = self._outages.setdefault(exc.component, self.clock())
                if self.clock() - since >= self.policy.outage_deadline_s:
                    self.stats.refused_unavailable += len(fresh)
                    log.error("%s unavailable for %.0f s; answering %d requests 503: %s",
                              exc.component, self.clock() - since, len(fresh), exc)  # fmt: skip
                    return self.scorer.refuse(fresh, ServiceUnavailable(f"{exc.component} is unavailable; retry later"))
                self.stats.scoring_retries += 1
                self._retry_wait(exc, attempt)
                attempt += 1
                fresh = [r for r in fresh if self._owns(r)]
                if not fresh:
                    return []
                continue
            self._outages_over(exclude="delta")
            return results

    def _answer(self, results: list[RequestResult]) -> list[RequestResult]:
        """Step 3: every answer acknowledged; returns the results as answered (an answer the
        broker refuses for good is replaced by its error answer)."""
        answered = list(results)
        todo = list(range(len(answered)))
        attempt = 0
        while todo:
            failed = self.sink.deliver([answered[i] for i in todo])
            retry: list[int] = []
            for undelivered in failed:
                i = todo[undelivered.index]
                if undelivered.permanent:
                    answered[i] = undeliverable(answered[i], undelivered.reason)
                    retry.append(i)  # its error answer and dead letter, at once
                elif self._owns(answered[i].request):
                    retry.append(i)
            transient = [u for u in failed if not u.permanent]
            if transient:
                self.stats.answer_retries += 1
                self._retry_wait(ComponentError("kafka", _reasons(transient)), attempt)
                attempt += 1
            todo = retry
        if attempt:
            self._outages_over(exclude="delta")
        return answered

    def flush(self) -> None:
        """Step 5: rows and offsets into Delta (retried while the table is down), then Kafka."""
        started = self.clock()
        rows = self.log.waiting_rows
        positions = self._retrying("delta", self.log.flush)
        self._commit(positions, wait=True)
        if self.metrics is not None:
            self.metrics.table_flushed("kafka", rows, self.clock() - started)

    def _last_flush(self) -> None:
        """The clean stop's flush: one try, no waiting for a component that is down."""
        try:
            self._commit(self.log.flush(), wait=True)
        except LakeserveError as exc:
            log.warning("last append before stopping failed; the next owner replays those records: %s", exc)

    def _commit(self, positions: dict[Partition, int], *, wait: bool) -> None:
        if positions and self.source.commit(positions, wait=wait):
            self.log.committed(positions)

    # -- waiting for components ------------------------------------------------------------
    def _retrying(self, component: str, step: Callable[[], Result]) -> Result:
        """``step()``, retried with backoff for as long as ``component`` fails (until stopped)."""
        attempt = 0
        while True:
            try:
                value = step()
            except ComponentError as exc:
                self._outages.setdefault(component, self.clock())
                self.stats.append_retries += 1
                self._retry_wait(exc, attempt)
                attempt += 1
                continue
            self._outage_over(component)
            return value

    def _retry_wait(self, exc: ComponentError, attempt: int) -> None:
        """Back off, consumption paused (the consumer keeps its group membership)."""
        wait_s = self.policy.backoff(attempt)
        level = logging.WARNING if attempt in (0, 5) or attempt % 20 == 0 else logging.DEBUG
        log.log(level, "%s failed (attempt %d), retrying in %.1f s: %s", exc.component, attempt + 1, wait_s, exc)
        if self.metrics is not None:
            self.metrics.component_retry(exc.component)
        end = self.clock() + wait_s
        while (left := end - self.clock()) > 0:
            if self._stop.is_set():
                raise _Stopping
            self.source.idle(min(left, 0.5))
        if self._stop.is_set():
            raise _Stopping

    def _outage_over(self, component: str) -> None:
        since = self._outages.pop(component, None)
        if since is not None:
            seconds = self.clock() - since
            log.warning("%s answers again after %.1f s", component, seconds)
            if self.metrics is not None:
                self.metrics.component_outage(component, seconds)

    def _outages_over(self, exclude: str) -> None:
        for component in [c for c in self._outages if c != exclude]:
            self._outage_over(component)

    # -- helpers ---------------------------------------------------------------------------
    def _owns(self, request: ScoringRequest) -> bool:
        p = partition_of(request)
        return p is None or self.log.owns(p)

    def _replace_stalled_consumer(self) -> None:
        """A rebalance that never ends (revoked, never assigned again within ``rejoin_timeout_s``)
        gets a fresh consumer: kafka-python 3 has been seen to stall after the leader's SyncGroup
        and be expelled from the group, idling forever. Nothing is buffered after a revoke."""
        if self._revoked_at is None or self.clock() - self._revoked_at < self.rejoin_timeout_s:
            return
        log.warning("no partitions assigned %.0f s after a revoke; replacing the consumer",
                    self.clock() - self._revoked_at)  # fmt: skip
        self.flush()
        self.source.close()
        self._revoked_at = self.clock()  # the new consumer gets the same time to join
        self.source = self._make_source(self)
        self.stats.consumers_replaced += 1

    def _count(self, results: Sequence[RequestResult]) -> None:
        self.stats.batches += 1
        self.stats.requests += len(results)
        for r in results:
            self.stats.by_status[r.status_code] = self.stats.by_status.get(r.status_code, 0) + 1
            self.stats.errors += not r.ok
            self.stats.undecodable += r.request.defect is not None
        if self.metrics is not None:
            self.metrics.batch_scored("kafka", results)


def _reasons(failed: Sequence[Undelivered]) -> str:
    reasons = sorted({u.reason for u in failed})
    return f"{len(failed)} answer(s) not acknowledged: {'; '.join(reasons[:3])}"
