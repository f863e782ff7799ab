"""Helpers for the streaming-service tests against the real broker, Feast, MLflow and Delta.

Each test gets its own topics, consumer group and inference table (``service_settings``), so
tests share the one broker of the session without seeing each other's records.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pytest
from deltalake import DeltaTable
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from registered_models import GOOD  # shared with the batch and REST tests
from registered_models import register_model as register_model

from lakeserve.pipelines.embedded.kafka import ensure_topics
from lakeserve.pipelines.supervisor import Supervisor
from lakeserve.pipelines.worker import Worker, build_worker
from lakeserve.scoring.settings import Limits, Route, ServedEntity, TrafficConfig
from lakeserve.settings import Settings


def settings_for(base: Settings, name: str, **endpoint: Any) -> Settings:
    """Settings with topics, group and table of their own; endpoint fields overridden by ``endpoint``."""
    kafka = base.kafka.model_copy(
        update={
            "requests_topic": f"t.{name}.requests",
            "responses_topic": f"t.{name}.responses",
            "dead_letter_topic": f"t.{name}.dead-letters",
            "group_id": f"g-{name}",
        }
    )
    capture = base.endpoint.auto_capture_config.model_copy(update={"table_name_prefix": name.replace("-", "_")})
    ep = base.endpoint.model_copy(update={"auto_capture_config": capture, **endpoint})
    tables = base.tables.model_copy(update={"flush_rows": 200, "flush_interval_ms": 300})
    s = base.model_copy(update={"kafka": kafka, "endpoint": ep, "tables": tables})
    ensure_topics(s.kafka)
    return s


@dataclass
class Answer:
    key: bytes | None
    body: dict[str, Any]
    headers: dict[str, str]
    partition: int
    offset: int


def produce(settings: Settings, bodies: list[bytes], keys: list[bytes] | None = None, topic: str | None = None) -> None:
    producer = KafkaProducer(**settings.kafka.client_options(), linger_ms=5,
                             max_request_size=settings.kafka.max_message_bytes)  # fmt: skip
    for i, body in enumerate(bodies):
        producer.send(topic or settings.kafka.requests_topic, value=body, key=keys[i] if keys else str(i).encode())
    producer.flush()
    producer.close()


def read_topic(
    settings: Settings, topic: str, until: Callable[[list[Answer]], bool], timeout_s: float = 90
) -> list[Answer]:
    """Every message of ``topic`` from the beginning until ``until(messages)``; fails at the deadline."""
    consumer = KafkaConsumer(
        **settings.kafka.client_options(),
        enable_auto_commit=False,
        fetch_max_bytes=max(50 * 1024 * 1024, settings.kafka.max_message_bytes),
        max_partition_fetch_bytes=settings.kafka.max_message_bytes,
    )
    parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    seen: list[Answer] = []
    deadline = time.monotonic() + timeout_s
    try:
        while not until(seen):
            if time.monotonic() > deadline:
                pytest.fail(f"{topic}: condition not met in {timeout_s} s after {len(seen)} messages")
            for tp, records in consumer.poll(timeout_ms=200).items():
                for r in records:
                    headers = {k: v.decode() for k, v in r.headers or []}
                    body = json.loads(r.value) if topic != settings.kafka.dead_letter_topic else {"raw": r.value}
                    seen.append(Answer(r.key, body, headers, tp.partition, r.offset))
    finally:
        consumer.close()
    return seen


def answers_for(settings: Settings, request_count: int, timeout_s: float = 120) -> dict[str, Answer]:
    """Answers by request id once ``request_count`` distinct requests are answered."""
    seen = read_topic(
        settings,
        settings.kafka.responses_topic,
        lambda a: len({x.headers["request-id"] for x in a}) >= request_count,
        timeout_s,
    )
    return {a.headers["request-id"]: a for a in seen}


def table_rows(settings: Settings) -> pd.DataFrame:
    return DeltaTable(settings.inference_table_uri).to_pandas()


@contextmanager
def running(settings: Settings) -> Iterator[Worker]:
    """One worker in a thread of this process, ready once the group has assigned it partitions."""
    worker = build_worker(settings)
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            worker.loop.run(stop)
        except BaseException as exc:  # surfaced to the test below
            errors.append(exc)

    thread = threading.Thread(target=run, name=f"worker-{uuid.uuid4().hex[:6]}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not worker.loop.log.owned() and not errors:
        assert time.monotonic() < deadline, "the worker was not assigned partitions in 60 s"
        threading.Event().wait(0.05)
    try:
        yield worker
    finally:
        stop.set()
        thread.join(timeout=60)
        if errors:
            raise errors[0]


class ResponseCollector:
    """Reads a responses topic from the beginning in a background thread, counting answers per request id."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.counts: dict[str, int] = {}
        self.statuses: dict[str, set[str]] = {}
        self.served_by: list[tuple[int, str]] = []  # (answer order, served-model-name)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        topic = self.settings.kafka.responses_topic
        consumer = KafkaConsumer(**self.settings.kafka.client_options(), enable_auto_commit=False)
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        while not self._stop.is_set():
            for records in consumer.poll(timeout_ms=200).values():
                with self._lock:
                    for r in records:
                        h = {k: v.decode() for k, v in r.headers or []}
                        rid = h["request-id"]
                        self.counts[rid] = self.counts.get(rid, 0) + 1
                        self.statuses.setdefault(rid, set()).add(h["status"])
                        self.served_by.append((len(self.served_by), h.get("served-model-name", "")))
        consumer.close()

    def answered(self) -> int:
        with self._lock:
            return len(self.counts)

    def wait_for(self, count: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.answered() < count:
            if time.monotonic() > deadline:
                pytest.fail(f"only {self.answered()} of {count} requests answered in {timeout_s} s")
            self._stop.wait(0.1)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def produce_tracked(settings: Settings, bodies: list[bytes]) -> list[tuple[int, int]]:
    """Produce and return each record's (partition, offset) as the broker acknowledged it."""
    producer = KafkaProducer(**settings.kafka.client_options(), linger_ms=5, acks="all")
    futures = [producer.send(settings.kafka.requests_topic, value=b, key=str(i).encode()) for i, b in enumerate(bodies)]
    producer.flush()
    positions = [(f.get(timeout=30).partition, f.get(timeout=30).offset) for f in futures]
    producer.close()
    return positions


def serving(settings: Settings, model: str, version: str, limits: Limits | None = None) -> Settings:
    """``settings`` serving one registered model version, under its own name, to all traffic."""
    endpoint = settings.endpoint.model_copy(update={
        "served_entities": [ServedEntity(name=model, entity_name=model, entity_version=version)],
        "traffic_config": TrafficConfig(routes=[Route(served_model_name=model, traffic_percentage=100)]),
        **({"limits": limits} if limits else {}),
    })  # fmt: skip
    return settings.model_copy(update={"endpoint": endpoint})


@contextmanager
def supervised(settings: Settings, workers: int = 1) -> Iterator[Supervisor]:
    """Worker processes under a supervisor (in a thread of the test), ready; stopped on the way out."""
    supervisor = Supervisor(settings, workers, restart_backoff_s=0.2)
    stopped = threading.Event()
    runner = threading.Thread(target=supervisor.run, args=(stopped,), daemon=True)
    runner.start()
    try:
        supervisor.wait_ready()
        yield supervisor
    finally:
        stopped.set()
        runner.join(timeout=60)


def body(**fields: Any) -> bytes:
    return json.dumps({"dataframe_records": [{**GOOD, **fields}]}).encode()


def topic_id(settings: Settings, topic: str | None = None) -> str | None:
    """The broker's id of ``topic`` (the requests topic by default), as request ids use it."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(**settings.kafka.client_options())
    try:
        described = admin.describe_topics([topic or settings.kafka.requests_topic])
    finally:
        admin.close()
    return str(described[0]["topic_id"])


@contextmanager
def broker_hung(settings: Settings) -> Iterator[None]:
    """The session's broker process stopped (SIGSTOP): connections stay open, nothing answers.
    On the way out it is continued and answering again, for the tests that follow."""
    import os
    import signal

    from lakeserve.pipelines.embedded.kafka import list_topics
    from lakeserve.pipelines.embedded.stack import Stack

    pid = next(s.pid for s in Stack(settings).status() if s.name == "kafka")
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)
        deadline = time.monotonic() + 120
        while list_topics(settings.kafka) is None:
            assert time.monotonic() < deadline, "the broker did not come back after SIGCONT"


@contextmanager
def feast_locked(settings: Settings) -> Iterator[None]:
    """The SQLite online store held under an exclusive lock: readers fail "database is locked"."""
    assert settings.feast.repo_path is not None
    conn = sqlite3.connect(settings.feast.repo_path / "online_store.db", timeout=30, isolation_level=None)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        yield
    finally:
        conn.execute("COMMIT")
        conn.close()
