"""The delivery loop's order and failure policy, on in-memory parts (a list source, a sink that
fails on demand, the in-memory writer) and a fake clock that the source's ``idle`` moves: what is
answered, logged and committed when a component fails, and when nothing may be committed."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import pyarrow as pa
import pytest

from lakeserve.errors import ComponentError, ScoringError
from lakeserve.monitoring.delta_writer import InMemoryInferenceWriter
from lakeserve.monitoring.inference_log import InferenceLog
from lakeserve.monitoring.inference_rows import RowFormat
from lakeserve.monitoring.table_schema import inference_schema
from lakeserve.pipelines.delivery_loop import DeliveryLoop, RetryPolicy, WorkerStalled
from lakeserve.pipelines.kafka_sinks import Undelivered
from lakeserve.pipelines.kafka_source import Partition, RebalanceHandler
from lakeserve.scoring.records import Origin, RecordResult, RequestResult, ScoringRequest

TOPIC = "requests"
P0 = (TOPIC, 0)
SCHEMA = inference_schema({}, {"prediction": pa.float64()})
POLICY = RetryPolicy(backoff_initial_s=0.5, backoff_max_s=4.0, outage_deadline_s=10.0)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class ListSource:
    """Hands out prepared batches; ``idle`` moves the clock instead of waiting."""

    def __init__(self, handler: RebalanceHandler, batches: list[list[ScoringRequest]], clock: Clock) -> None:
        self.batches, self.clock = batches, clock
        self.committed: dict[Partition, int] = {}
        self.idled = 0.0
        self.polls = 0
        self.closed = False
        self.last: list[ScoringRequest] = []
        handler.assigned([P0])

    def poll(self) -> list[ScoringRequest]:
        self.polls += 1
        self.last = self.batches.pop(0) if self.batches else []
        return self.last

    def commit(self, positions: Mapping[Partition, int], *, wait: bool = True) -> bool:
        self.committed.update(positions)
        return True

    def identities(self, partitions: list[Partition]) -> dict[Partition, str | None]:
        return {p: "id-1" for p in partitions}

    def seek(self, partition: Partition, offset: int) -> None:
        self.batches.insert(0, [r for r in self.last if (r.origin.offset or 0) >= offset])

    def idle(self, seconds: float) -> None:
        self.idled += seconds
        self.clock.now += seconds

    def close(self) -> None:
        self.closed = True


class Sink:
    """Records what was delivered; ``transient`` and ``permanent`` fail the next deliveries."""

    def __init__(self) -> None:
        self.delivered: list[RequestResult] = []
        self.transient = 0
        self.permanent: set[str] = set()  # request ids refused for good (once)

    def deliver(self, results: Sequence[RequestResult]) -> list[Undelivered]:
        if self.transient:
            self.transient -= 1
            return [Undelivered(i, "KafkaTimeoutError: no ack", False) for i in range(len(results))]
        failed = []
        for i, r in enumerate(results):
            if r.request.request_id in self.permanent and r.ok:
                failed.append(Undelivered(i, "MessageSizeTooLargeError: 2 MB", True))
            else:
                self.delivered.append(r)
        return failed

    def close(self) -> None: ...


class Scorer:
    """Scores everything 200, after failing ``failures`` times with a Feast outage."""

    def __init__(self) -> None:
        self.failures = 0
        self.calls = 0
        self.stuck: str | None = None

    def score(self, requests: Sequence[ScoringRequest]) -> list[RequestResult]:
        self.calls += 1
        if self.failures:
            self.failures -= 1
            raise ComponentError("feast", "database is locked")
        return [RequestResult(r, 200, b'{"predictions": [1.0]}', [RecordResult(0, prediction=1.0)]) for r in requests]

    def refuse(self, requests: Sequence[ScoringRequest], error: ScoringError) -> list[RequestResult]:
        return [RequestResult(r, error.status_code, b"{}", [RecordResult(0, error.status_code, error.error_code)],
                              error_code=error.error_code) for r in requests]  # fmt: skip

    def stalled(self) -> str | None:
        return self.stuck


class FlakyWriter(InMemoryInferenceWriter):
    def __init__(self) -> None:
        super().__init__()
        self.failures = 0
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def append(self, rows: pa.Table, transactions: Mapping[str, int]) -> None:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)
        if self.failures:
            self.failures -= 1
            raise ComponentError("delta", "Not a directory (os error 20)")
        super().append(rows, transactions)


def request(offset: int) -> ScoringRequest:
    return ScoringRequest(f"r{offset}", b"{}", datetime.now(UTC), Origin("kafka", TOPIC, 0, offset))


Built = tuple[DeliveryLoop, Scorer, Sink, FlakyWriter, Clock]


def build(batches: list[list[ScoringRequest]], flush_rows: int = 1) -> Built:
    clock, scorer, sink, writer = Clock(), Scorer(), Sink(), FlakyWriter()
    inference_log = InferenceLog(writer, RowFormat(writer.ensure(SCHEMA), "ep", 1.0, 1 << 20), "g",
                                 flush_rows=flush_rows, flush_interval_ms=10**6, clock=clock)  # fmt: skip
    loop = DeliveryLoop(lambda h: ListSource(h, batches, clock), scorer, sink, inference_log, POLICY, clock=clock)
    return loop, scorer, sink, writer, clock


def source(loop: DeliveryLoop) -> ListSource:
    assert isinstance(loop.source, ListSource)
    return loop.source


def logged_offsets(writer: InMemoryInferenceWriter) -> list[int]:
    return sorted(writer.rows()["kafka_offset"].to_pylist())


def test_answered_then_logged_then_committed() -> None:
    loop, _, sink, writer, _ = build([[request(0), request(1), request(0), request(2)]])
    assert loop.run_once() == 3  # offset 0 came twice (a rebalance inside one poll): once
    assert [r.request.request_id for r in sink.delivered] == ["r0", "r1", "r2"]
    assert logged_offsets(writer) == [0, 1, 2]
    assert source(loop).committed == {P0: 3}


def test_a_component_outage_is_retried_with_consumption_paused() -> None:
    loop, scorer, sink, writer, _clock = build([[request(0), request(1)]])
    scorer.failures = 3
    loop.run_once()
    assert scorer.calls == 4
    assert source(loop).idled == pytest.approx(0.5 + 1.0 + 2.0)  # backoff doubles
    assert source(loop).polls == 1  # nothing else was consumed meanwhile
    assert [r.status_code for r in sink.delivered] == [200, 200]
    assert logged_offsets(writer) == [0, 1]
    assert loop.stats.scoring_retries == 3


def test_an_outage_past_its_deadline_is_answered_503_until_the_component_is_back() -> None:
    loop, scorer, sink, writer, clock = build([[request(0)], [request(1)], [request(2)]])
    scorer.failures = 10**6
    loop.run_once()  # retried until the 10 s deadline, then refused
    assert clock.now >= POLICY.outage_deadline_s
    assert [(r.status_code, r.error_code) for r in sink.delivered] == [(503, "TEMPORARILY_UNAVAILABLE")]
    before = clock.now
    loop.run_once()  # still down: tried once and refused at once, no more waiting
    assert clock.now == before
    assert [r.status_code for r in sink.delivered] == [503, 503]
    scorer.failures = 0
    loop.run_once()
    assert [r.status_code for r in sink.delivered] == [503, 503, 200]
    assert logged_offsets(writer) == [0, 1, 2]  # every request logged, the refused ones too
    assert source(loop).committed == {P0: 3}


def test_unacknowledged_answers_are_sent_again_and_a_refused_one_becomes_an_error_answer() -> None:
    loop, _, sink, writer, _ = build([[request(0), request(1)]])
    sink.transient = 2
    sink.permanent = {"r1"}
    loop.run_once()
    assert [(r.request.request_id, r.status_code, r.error_code) for r in sink.delivered] == [
        ("r0", 200, None),
        ("r1", 500, "MAX_RESPONSE_SIZE_EXCEEDED"),
    ]
    rows = writer.rows().to_pylist()
    assert [(r["kafka_offset"], r["status_code"], r["error_code"]) for r in rows] == [
        (0, 200, None),
        (1, 500, "MAX_RESPONSE_SIZE_EXCEEDED"),
    ]
    assert loop.stats.answer_retries == 2


def test_a_failing_append_is_retried_and_nothing_is_committed_before_it_lands() -> None:
    loop, _, _, writer, _ = build([[request(0)], [request(1)]])
    writer.failures = 4
    loop.run_once()
    assert loop.stats.append_retries == 4
    assert logged_offsets(writer) == [0]
    assert source(loop).committed == {P0: 1}
    assert source(loop).polls == 1  # backpressure: nothing consumed while the table was down


def test_after_an_exception_nothing_more_is_appended_or_committed() -> None:
    loop, _, _, writer, _ = build([[request(0)]], flush_rows=10)

    def broken(requests: Sequence[ScoringRequest]) -> list[RequestResult]:
        raise RuntimeError("a bug")

    loop.run_once()  # answered and buffered, not due yet
    loop.scorer.score = broken  # type: ignore[method-assign]
    source(loop).batches.append([request(1)])
    with pytest.raises(RuntimeError):
        loop.run(threading.Event())
    assert writer.commits == []
    assert source(loop).committed == {}
    assert source(loop).closed


def test_a_stop_while_waiting_for_a_component_ends_the_loop_without_committing() -> None:
    loop, scorer, _, writer, clock = build([[request(0)]])
    scorer.failures = 10**6
    stop = threading.Event()

    def idle_then_stop(seconds: float) -> None:
        clock.now += seconds
        stop.set()

    source(loop).idle = idle_then_stop  # type: ignore[method-assign]
    loop.run(stop)
    assert writer.commits == []
    assert source(loop).committed == {}


def test_a_stalled_model_stops_the_worker_after_its_batch_is_logged() -> None:
    loop, scorer, _sink, writer, _ = build([[request(0)]], flush_rows=10)
    scorer.stuck = "a predict call of served entity 'm' has run for more than 60 s"
    with pytest.raises(WorkerStalled, match="run for more than"):
        loop.run_once()
    assert logged_offsets(writer) == [0]
    assert source(loop).committed == {P0: 1}


def test_a_revoke_during_a_flush_logs_each_row_once() -> None:
    """kafka-python runs the revoke callback (a flush) on its IO thread while the loop may flush."""
    loop, _, _, writer, _ = build([[request(0), request(1), request(2)]], flush_rows=10)
    loop.run_once()
    writer.gate = threading.Event()
    first = threading.Thread(target=loop.flush)
    first.start()
    assert writer.entered.wait(10)
    writer.entered.clear()
    second = threading.Thread(target=loop.revoked, args=([P0],))
    second.start()
    overlapped = writer.entered.wait(1.0)  # bounded look for the race: it must not get in
    writer.gate.set()
    first.join(10)
    second.join(10)
    assert not overlapped
    assert logged_offsets(writer) == [0, 1, 2]


def test_a_rebalance_that_never_ends_gets_a_fresh_consumer() -> None:
    """Revoked and not assigned again within rejoin_timeout_s: the consumer is replaced."""
    clock, scorer, sink, writer = Clock(), Scorer(), Sink(), FlakyWriter()
    inference_log = InferenceLog(writer, RowFormat(writer.ensure(SCHEMA), "ep", 1.0, 1 << 20), "g",
                                 flush_rows=1, flush_interval_ms=0, clock=clock)  # fmt: skip
    sources: list[ListSource] = []

    def make_source(handler: RebalanceHandler) -> ListSource:
        sources.append(ListSource(handler, [[request(len(sources))]], clock))
        return sources[-1]

    loop = DeliveryLoop(make_source, scorer, sink, inference_log, POLICY, clock=clock, rejoin_timeout_s=60)
    assert loop.run_once() == 1
    loop.revoked([P0])  # a rebalance starts ...
    clock.now = 59.0
    loop.run_once()
    assert len(sources) == 1  # ... and may take its time
    clock.now = 61.0
    loop.run_once()  # ... but not forever
    assert len(sources) == 2
    assert loop.stats.consumers_replaced == 1
    loop.run_once()
    assert logged_offsets(writer) == [0, 1]  # the fresh consumer's record too
