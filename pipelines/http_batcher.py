"""Micro-batching of HTTP requests into the scoring core.

Callers ``await submit(request)``; one collector task takes the first waiting request and,
without waiting, every request queued behind it (what arrived while the previous batch was
scored), up to ``limits.max_batch_size``, while passes of the event loop bring more, for at most
``limits.max_batch_wait_ms`` (an upper bound, never a delay): an idle server scores a lone
request at once, a busy one scores full batches, and no delay needs tuning. It scores the
batch in one worker thread (the core is synchronous; the event loop stays free to accept and
answer), hands the results to ``on_scored`` in that thread (inference rows, batch metrics), and resolves
every caller's future. A failure of a real component (``ComponentError`` out of the core) fails
every caller of the batch with :class:`~lakeserve.errors.ServiceUnavailable`; the next batch is tried afresh.

Bounded work: at most ``max_queued`` requests are in the batcher at once (submitted and not yet
answered or given up); one more is refused at once with :class:`~lakeserve.errors.Overloaded`.
A request whose caller gave up (cancelled) or whose ``limits.timeout_s`` passed before its batch
is scored is dropped, never scored (nor logged); ``on_dropped`` is told how many.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from lakeserve.errors import Overloaded, ServiceUnavailable
from lakeserve.scoring.records import RequestResult, ScoringRequest
from lakeserve.scoring.settings import Limits

log = logging.getLogger(__name__)

ScoreBatch = Callable[[Sequence[ScoringRequest]], list[RequestResult]]  # a batch in, one result each out
OnScored = Callable[[list[RequestResult]], None]
OnDropped = Callable[[int], None]  # how many requests of a batch were dropped unscored


@dataclass(slots=True)
class _Pending:
    request: ScoringRequest
    future: asyncio.Future[RequestResult]
    arrived: float  # the batcher's clock when it was submitted

    def expired(self, now: float, timeout_s: float) -> bool:
        return self.future.done() or now >= self.arrived + timeout_s


class MicroBatcher:
    """Collects requests into micro-batches for one scoring thread; start and stop in the event loop."""

    def __init__(
        self,
        score: ScoreBatch,
        limits: Limits,
        on_scored: OnScored = lambda _: None,
        *,
        max_queued: int = 1024,
        on_dropped: OnDropped = lambda _: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock  # monotonic seconds: arrivals, deadlines, the collecting bound
        self._score, self._limits, self._on_scored, self._on_dropped = score, limits, on_scored, on_dropped
        self._max_queued, self._in = max_queued, 0
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="http-scoring")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="http-batcher")

    async def stop(self) -> None:
        """Score what is queued, then stop the collector and the scoring thread."""
        if self._task is not None:
            self._queue.put_nowait(None)
            await self._task
            self._task = None
        self._executor.shutdown(wait=True)

    @property
    def queued(self) -> int:
        """Requests submitted and not yet answered or given up."""
        return self._in

    async def submit(self, request: ScoringRequest) -> RequestResult:
        if self._in >= self._max_queued:
            raise Overloaded(f"{self._max_queued} requests are waiting already; retry later")
        future: asyncio.Future[RequestResult] = asyncio.get_running_loop().create_future()
        self._in += 1
        try:
            self._queue.put_nowait(_Pending(request, future, self._clock()))
            return await future
        finally:
            self._in -= 1

    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            if first is None:
                return
            batch, stopping = await self._collect(first)
            await self._score_batch(batch)
            if stopping:
                return

    async def _collect(self, first: _Pending) -> tuple[list[_Pending], bool]:
        """``first`` and what is queued behind it, without waiting: passes of the event loop let
        requests whose handlers are about to submit join, while each pass brings new ones, for
        at most ``max_batch_wait_ms``."""
        batch = [first]
        deadline = self._clock() + self._limits.max_batch_wait_ms / 1000
        passes = 0
        while len(batch) < self._limits.max_batch_size:
            before, passes = len(batch), passes + 1
            while len(batch) < self._limits.max_batch_size:
                try:
                    item = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
                if item is None:
                    return batch, True
                batch.append(item)
            if (passes > 1 and len(batch) == before) or self._clock() >= deadline:
                break
            await asyncio.sleep(0)
        return batch, False

    async def _score_batch(self, batch: list[_Pending]) -> None:
        now = self._clock()
        live = [p for p in batch if not p.expired(now, self._limits.timeout_s)]
        if len(live) < len(batch):
            self._on_dropped(len(batch) - len(live))
        if not live:
            return
        batch = live
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self._executor, self._score_and_report, [p.request for p in batch])
        except Exception as exc:  # a component failed: every caller of the batch is told
            log.error("scoring a batch of %d requests failed: %s: %s", len(batch), type(exc).__name__, exc)
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(ServiceUnavailable("the service cannot score right now; retry later"))
            return
        for p, result in zip(batch, results, strict=True):
            if not p.future.done():  # a caller that timed out no longer waits
                p.future.set_result(result)

    def _score_and_report(self, requests: list[ScoringRequest]) -> list[RequestResult]:
        results = self._score(requests)
        try:
            self._on_scored(results)
        except Exception:  # logging is best effort: the callers still get their answers
            log.exception("recording a scored batch failed")
        return results
