"""The delivery loop's bookkeeping, on in-memory parts: a record fetched twice in one micro-batch
(a rebalance inside a poll re-reads from the committed offset) is scored and logged once."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import pyarrow as pa

from lakeserve.monitoring.delta_writer import InMemoryInferenceWriter
from lakeserve.monitoring.row_buffer import RowBuffer
from lakeserve.monitoring.table_schema import inference_schema
from lakeserve.pipelines.checkpoint import DeliveryLoop, TableTarget
from lakeserve.pipelines.kafka_source import Partition, RebalanceHandler
from lakeserve.scoring.records import Origin, RecordResult, RequestResult, ScoringRequest

TOPIC = "requests"


class ListSource:
    def __init__(self, handler: RebalanceHandler, batches: list[list[ScoringRequest]]) -> None:
        self.batches, self.committed = batches, {}
        handler.assigned([(TOPIC, 0)])

    def poll(self) -> list[ScoringRequest]:
        return self.batches.pop(0) if self.batches else []

    def commit(self, positions: Mapping[Partition, int], *, wait: bool = True) -> None:
        self.committed.update(positions)

    def close(self) -> None: ...


class NullSink:
    def __init__(self) -> None:
        self.sent: list[RequestResult] = []

    def send(self, results: Sequence[RequestResult]) -> None:
        self.sent.extend(results)

    def flush(self) -> None: ...
    def close(self) -> None: ...


def request(offset: int) -> ScoringRequest:
    return ScoringRequest(f"r{offset}", b"{}", datetime.now(UTC), Origin("kafka", TOPIC, 0, offset))


def score(batch: Sequence[ScoringRequest]) -> list[RequestResult]:
    return [RequestResult(r, 200, b"{}", [RecordResult(0, prediction=1.0)]) for r in batch]


def test_a_record_fetched_twice_in_one_batch_is_scored_and_logged_once() -> None:
    writer = InMemoryInferenceWriter()
    schema = writer.ensure(inference_schema({}, {"prediction": pa.float64()}))
    sink = NullSink()
    twice = [request(0), request(1), request(0), request(1), request(2)]
    loop = DeliveryLoop(
        lambda h: ListSource(h, [twice]),
        score,
        sink,
        writer,
        TableTarget(schema, "ep", 1.0, 1 << 20),
        RowBuffer(1, 0, lambda: 0.0),
        "g",
    )
    assert loop.run_once() == 3
    loop.flush()
    assert [r.request.request_id for r in sink.sent] == ["r0", "r1", "r2"]
    rows = writer.rows()
    assert sorted(rows["kafka_offset"].to_pylist()) == [0, 1, 2]
    assert loop.source.committed == {(TOPIC, 0): 3}


class GatedBuffer(RowBuffer):
    """A buffer whose drain stops half-way (tables read, not yet cleared) until released."""

    def __init__(self) -> None:
        super().__init__(10**6, 10**6, lambda: 0.0)  # never due: only explicit flushes drain it
        self.entered = [threading.Event(), threading.Event()]
        self.release = threading.Event()
        self.calls = 0

    def drain(self) -> tuple[pa.Table, dict[str, int]]:
        tables = pa.concat_tables(self._tables) if self._tables else pa.table({})
        versions = dict(self._versions)
        self.entered[min(self.calls, 1)].set()
        self.calls += 1
        self.release.wait(10)
        super().drain()
        return tables, versions


def test_two_flushes_at_once_log_each_row_once() -> None:
    """kafka-python runs the revoke callback (a flush) on its IO thread while the loop may flush."""
    writer = InMemoryInferenceWriter()
    schema = writer.ensure(inference_schema({}, {"prediction": pa.float64()}))
    buffer = GatedBuffer()
    loop = DeliveryLoop(
        lambda h: ListSource(h, [[request(0), request(1), request(2)]]),
        score,
        NullSink(),
        writer,
        TableTarget(schema, "ep", 1.0, 1 << 20),
        buffer,
        "g",
        clock=lambda: 0.0,
    )
    assert loop.run_once() == 3
    first = threading.Thread(target=loop.flush)
    first.start()
    assert buffer.entered[0].wait(10)
    second = threading.Thread(target=loop.flush, kwargs={"wait": False})
    second.start()
    overlapped = buffer.entered[1].wait(1.0)  # bounded look for the race: it must not get in
    buffer.release.set()
    first.join(10)
    second.join(10)
    assert not overlapped
    assert sorted(writer.rows()["kafka_offset"].to_pylist()) == [0, 1, 2]


def test_a_rebalance_that_never_ends_gets_a_fresh_consumer() -> None:
    """Revoked and not assigned again within rejoin_timeout_s: the consumer is replaced."""
    writer = InMemoryInferenceWriter()
    schema = writer.ensure(inference_schema({}, {"prediction": pa.float64()}))
    now = [0.0]
    sources: list[ListSource] = []

    def make_source(handler: RebalanceHandler) -> ListSource:
        sources.append(ListSource(handler, [[request(len(sources))]]))
        return sources[-1]

    loop = DeliveryLoop(
        make_source,
        score,
        NullSink(),
        writer,
        TableTarget(schema, "ep", 1.0, 1 << 20),
        RowBuffer(1, 0, lambda: now[0]),
        "g",
        clock=lambda: now[0],
        rejoin_timeout_s=60,
    )
    assert loop.run_once() == 1
    loop.revoked([(TOPIC, 0)])  # a rebalance starts ...
    now[0] = 59.0
    loop.run_once()
    assert len(sources) == 1  # ... and may take its time
    now[0] = 61.0
    loop.run_once()  # ... but not forever
    assert len(sources) == 2
    assert loop.stats.consumers_replaced == 1
    loop.flush()
    assert sorted(writer.rows()["kafka_offset"].to_pylist()) == [0, 1]  # the fresh consumer's record too
