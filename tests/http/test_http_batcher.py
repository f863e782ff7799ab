"""The REST micro-batcher on its own (pure logic: a scoring function that the test holds busy).

Batches are adaptive: a lone request is scored at once, whatever ``max_batch_wait_ms`` says;
what queues while a batch is scored forms the next batch, up to ``max_batch_size``; a request
whose deadline passed or whose caller gave up while it queued is dropped, never scored."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from lakeserve.pipelines.http_batcher import MicroBatcher
from lakeserve.scoring.records import Origin, RequestResult, ScoringRequest
from lakeserve.scoring.settings import Limits


class HeldScorer:
    """Scores instantly, except that a request whose body is ``b"hold"`` waits for ``release``."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.holding = threading.Event()
        self.release = threading.Event()

    def __call__(self, requests: Sequence[ScoringRequest]) -> list[RequestResult]:
        self.batches.append([r.request_id for r in requests])
        if any(r.body == b"hold" for r in requests):
            self.holding.set()
            self.release.wait(30)
        return [RequestResult(r, 200, b"{}", []) for r in requests]


def request(name: str, body: bytes = b"{}") -> ScoringRequest:
    return ScoringRequest(name, body, datetime.now(UTC), Origin("http"))


async def wait_for(condition: threading.Event) -> None:
    await asyncio.wait_for(asyncio.to_thread(condition.wait, 30), 35)


async def until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.01)


def run(limits: Limits, scenario: object, clock: Callable[[], float] = time.monotonic) -> HeldScorer:
    scorer = HeldScorer()

    async def main() -> None:
        batcher = MicroBatcher(scorer, limits, clock=clock)
        batcher.start()
        try:
            await scenario(batcher, scorer)  # type: ignore[operator]
        finally:
            scorer.release.set()
            await batcher.stop()

    asyncio.run(main())
    return scorer


def test_a_lone_request_is_scored_at_once_without_waiting_for_company() -> None:
    async def scenario(batcher: MicroBatcher, scorer: HeldScorer) -> None:
        # a batch that waited for company would take the 60 s bound; the answer comes well before
        result = await asyncio.wait_for(batcher.submit(request("alone")), 20)
        assert result.status_code == 200

    scorer = run(Limits(max_batch_size=100, max_batch_wait_ms=60_000), scenario)
    assert scorer.batches == [["alone"]]


def test_what_queues_while_a_batch_is_scored_is_the_next_batch_up_to_the_size_bound() -> None:
    async def scenario(batcher: MicroBatcher, scorer: HeldScorer) -> None:
        first = asyncio.create_task(batcher.submit(request("busy", b"hold")))
        await wait_for(scorer.holding)
        behind = [asyncio.create_task(batcher.submit(request(f"q{i}"))) for i in range(5)]
        await asyncio.wait_for(until(lambda: batcher.queued == 6), 20)
        scorer.release.set()
        results = await asyncio.gather(first, *behind)
        assert [r.status_code for r in results] == [200] * 6

    scorer = run(Limits(max_batch_size=3, max_batch_wait_ms=0), scenario)
    assert scorer.batches == [["busy"], ["q0", "q1", "q2"], ["q3", "q4"]]


def test_requests_past_their_deadline_or_given_up_while_queued_are_never_scored() -> None:
    dropped: list[int] = []
    now = [0.0]

    async def scenario(batcher: MicroBatcher, scorer: HeldScorer) -> None:
        batcher._on_dropped = dropped.append
        first = asyncio.create_task(batcher.submit(request("busy", b"hold")))
        await wait_for(scorer.holding)
        late = [asyncio.create_task(batcher.submit(request(f"late{i}"))) for i in range(2)]
        gone = asyncio.create_task(batcher.submit(request("gone")))
        await asyncio.wait_for(until(lambda: batcher.queued == 4), 20)
        gone.cancel()  # its caller gave up
        now[0] += 0.3  # the queued requests' 0.2 s deadline passes while the scorer is busy
        scorer.release.set()
        await first
        await asyncio.wait_for(until(lambda: bool(dropped)), 20)
        assert all(not t.done() for t in late)  # never resolved: the transport answers them 504 itself
        for t in late:
            t.cancel()

    scorer = run(Limits(timeout_s=0.2, max_batch_size=10), scenario, clock=lambda: now[0])
    assert scorer.batches == [["busy"]]
    assert dropped == [3]
