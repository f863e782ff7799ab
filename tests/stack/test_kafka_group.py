"""The embedded broker is a real Kafka: a consumer group of two processes shares the partitions,
and a new member resumes from the committed offsets."""

from __future__ import annotations

import multiprocessing as mp
import queue
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.consumer.subscription_state import ConsumerRebalanceListener

from lakeserve.pipelines.embedded.kafka import ensure_topics, list_topics
from lakeserve.settings import Settings

TOPIC = "it.consumer-group"
GROUP = "it-group"


def member(options: dict[str, Any], name: str, events: Any, stop: Any) -> None:
    """A group member in its own process: reports its assignment and every record, commits each batch."""

    class Report(ConsumerRebalanceListener):  # type: ignore[misc]
        def on_partitions_revoked(self, revoked: Any) -> None:
            events.put((name, "revoked", sorted(tp.partition for tp in revoked)))

        def on_partitions_assigned(self, assigned: Any) -> None:
            events.put((name, "assigned", sorted(tp.partition for tp in assigned)))

    consumer = KafkaConsumer(
        **options,
        group_id=GROUP,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
        max_poll_records=50,
    )
    consumer.subscribe([TOPIC], listener=Report())
    # As the product's source does: metadata before the first poll joins the group. Without it the
    # leader may assign from an empty snapshot and force a second rebalance at once, in which
    # kafka-python 3 has been seen to leave a member stalled (one of two fresh-clone runs here).
    consumer.topics()
    while not stop.is_set():
        batch = consumer.poll(timeout_ms=200)
        for tp, records in batch.items():
            for r in records:
                events.put((name, "record", (tp.partition, r.offset, int(r.value))))
        if batch:
            consumer.commit()
    consumer.close()
    events.put((name, "closed", None))


def produce(settings: Settings, values: range) -> None:
    producer = KafkaProducer(**settings.kafka.client_options(), linger_ms=5)
    for v in values:
        producer.send(TOPIC, key=str(v).encode(), value=str(v).encode())
    producer.flush()
    producer.close()


def collect(events: Any, until: Any, timeout_s: float = 60) -> list[tuple[str, str, Any]]:
    """Events until ``until(all_events)`` holds; fails at the deadline."""
    import time

    seen: list[tuple[str, str, Any]] = []
    deadline = time.monotonic() + timeout_s
    while not until(seen):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"condition not reached in {timeout_s} s; events: {seen[-20:]}")
        try:
            seen.append(events.get(timeout=remaining))
        except queue.Empty:
            continue
    return seen


def latest_assignments(seen: list[tuple[str, str, Any]]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for name, kind, value in seen:
        if kind == "assigned":
            out[name] = value
    return out


def test_broker_is_up_with_the_endpoint_topics(stack: Settings) -> None:
    topics = list_topics(stack.kafka)
    assert topics is not None
    assert {stack.kafka.requests_topic, stack.kafka.responses_topic, stack.kafka.dead_letter_topic} <= topics


def test_group_of_two_processes_shares_partitions_and_resumes(stack: Settings) -> None:
    ensure_topics(stack.kafka, [TOPIC])
    ctx = mp.get_context("spawn")
    events, stop = ctx.Queue(), ctx.Event()
    options = stack.kafka.client_options()
    procs = [ctx.Process(target=member, args=(options, n, events, stop)) for n in ("a", "b")]
    for p in procs:
        p.start()

    def balanced(seen: list[tuple[str, str, Any]]) -> bool:
        a = latest_assignments(seen)
        return len(a) == 2 and all(len(v) == 2 for v in a.values())

    seen = collect(events, balanced)
    assignment = latest_assignments(seen)
    assert sorted(assignment["a"] + assignment["b"]) == [0, 1, 2, 3]

    produce(stack, range(200))
    seen += collect(events, lambda s: sum(k == "record" for _, k, _ in s) >= 200)
    stop.set()
    seen += collect(events, lambda s: sum(k == "closed" for _, k, _ in s) == 2)
    for p in procs:
        p.join(timeout=30)
    records = [(n, v) for n, k, v in seen if k == "record"]
    assert sorted(v[2] for _, v in records) == list(range(200))  # each record once
    for name, (partition, _, _) in records:
        assert partition in assignment[name]  # each member read only its own partitions
    assert {n for n, _ in records} == {"a", "b"}

    # A new member of the same group resumes after the committed offsets.
    produce(stack, range(200, 300))
    stop = ctx.Event()
    late = ctx.Process(target=member, args=(options, "c", events, stop))
    late.start()
    resumed = collect(events, lambda s: sum(k == "record" for _, k, _ in s) >= 100)
    stop.set()
    collect(events, lambda s: any(k == "closed" for _, k, _ in s))
    late.join(timeout=30)
    values = sorted(v[2] for _, k, v in resumed if k == "record")
    assert values == list(range(200, 300))
