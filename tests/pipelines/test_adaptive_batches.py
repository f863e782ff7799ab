"""Adaptive micro-batches from the real broker: ``KafkaRequestSource.poll`` never waits for company.

A lone record is handed on at once, however long ``limits.max_batch_wait_ms`` is (it bounds how
long a batch keeps collecting records that arrive back to back, it is not a delay); a backlog
comes in full batches of ``limits.max_batch_size``."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from conftest_helpers import body, produce, settings_for

from lakeserve.pipelines.kafka_source import KafkaRequestSource, Partition
from lakeserve.scoring.records import ScoringRequest
from lakeserve.scoring.settings import Limits
from lakeserve.settings import Settings


class Assignments:
    def __init__(self) -> None:
        self.partitions: list[Partition] = []

    def assigned(self, partitions: list[Partition]) -> None:
        self.partitions += partitions

    def revoked(self, partitions: list[Partition]) -> None:
        self.partitions = [p for p in self.partitions if p not in partitions]


@pytest.fixture
def one_partition(stack: Settings, request: pytest.FixtureRequest) -> Settings:
    """Topics of one partition: the consumer's first fetch holds everything produced before it."""
    single = stack.model_copy(update={"kafka": stack.kafka.model_copy(update={"partitions": 1})})
    return settings_for(single, request.node.name.replace("_", "-").replace("[", "-").rstrip("]")[:60])


@pytest.fixture
def source(one_partition: Settings, request: pytest.FixtureRequest) -> Iterator[KafkaRequestSource]:
    limits: Limits = request.param
    source = KafkaRequestSource(one_partition.kafka, limits, Assignments())
    try:
        yield source
    finally:
        source.close()


def first_batch(source: KafkaRequestSource, timeout_s: float = 60) -> tuple[list[ScoringRequest], float]:
    """The first non-empty batch (polls are empty until the group assigns the partitions) and
    how long the poll that returned it took."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        started = time.monotonic()
        batch = source.poll()
        if batch:
            return batch, time.monotonic() - started
    raise AssertionError(f"no record polled within {timeout_s} s")


LONG_WAIT = Limits(max_batch_size=100, max_batch_wait_ms=60_000)


@pytest.mark.parametrize("source", [LONG_WAIT], indirect=True)
def test_a_lone_record_is_handed_on_at_once(one_partition: Settings, source: KafkaRequestSource) -> None:
    assert source.poll() == []  # joins the group; nothing to read yet
    produce(one_partition, [body(amount=1.0)])
    batch, took_s = first_batch(source)
    assert len(batch) == 1
    # a batch that waited for company would have returned after the 60 s bound
    assert took_s < LONG_WAIT.max_batch_wait_ms / 1000 / 2


def test_a_backlog_comes_in_full_batches(one_partition: Settings) -> None:
    produce(one_partition, [body(amount=float(i)) for i in range(150)])
    source = KafkaRequestSource(one_partition.kafka, Limits(max_batch_size=64, max_batch_wait_ms=1000), Assignments())
    try:
        batches = [first_batch(source)[0]]
        while sum(map(len, batches)) < 150:
            batches.append(first_batch(source)[0])
    finally:
        source.close()
    assert [len(b) for b in batches] == [64, 64, 22]
    assert [r.origin.offset for b in batches for r in b] == list(range(150))
