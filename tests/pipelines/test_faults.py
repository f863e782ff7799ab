"""Faults injected into the real components while requests flow: the Feast online store locked,
the Delta table's storage refusing writes, the responses topic refusing an answer, the requests
topic deleted and created again, a model that hangs, a model that kills its process, records
the Kafka client cannot decode. Each asserts what the client sees (every request answered, its
status), what the dead-letter topic holds, and that the table holds each request exactly once."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest_helpers import (
    Answer,
    answers_for,
    body,
    broker_hung,
    feast_locked,
    produce,
    read_topic,
    register_model,
    running,
    serving,
    settings_for,
    supervised,
    table_rows,
)
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic

from lakeserve.pipelines.embedded.kafka import ensure_topics
from lakeserve.scoring.settings import Limits
from lakeserve.scoring.testing_models import CrashingModel, StallingModel
from lakeserve.settings import Settings


def faulty(stack: Settings, name: str, *, limits: Limits | None = None, **kafka: Any) -> Settings:
    """The test's own topics, group and table, with quick retries and ``kafka`` overrides."""
    settings = settings_for(stack, name, **({"limits": limits} if limits else {}))
    quick = {"retry_backoff_initial_ms": 50, "retry_backoff_max_ms": 500, **kafka}
    return settings.model_copy(update={"kafka": settings.kafka.model_copy(update=quick)})


class Traffic(threading.Thread):
    """Produces ``bodies`` at a steady pace, keyed by position."""

    def __init__(self, settings: Settings, bodies: list[bytes], per_second: float) -> None:
        super().__init__(daemon=True)
        self.settings, self.bodies, self.interval = settings, bodies, 1.0 / per_second

    def run(self) -> None:
        producer = KafkaProducer(**self.settings.kafka.client_options(), linger_ms=1)
        pace = threading.Event()
        for i, b in enumerate(self.bodies):
            producer.send(self.settings.kafka.requests_topic, value=b, key=str(i).encode())
            pace.wait(self.interval)  # pacing the load, not waiting for readiness
        producer.flush()
        producer.close()


def until(condition: Any, timeout_s: float, what: str) -> None:
    """Wait until ``condition()`` holds (a readiness check), failing at the deadline."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout_s} s")
        threading.Event().wait(0.1)


def statuses(answers: dict[str, Answer]) -> pd.Series:
    return pd.Series({rid: int(a.headers["status"]) for rid, a in answers.items()})


def assert_logged_once(settings: Settings, answers: dict[str, Answer]) -> pd.DataFrame:
    rows = table_rows(settings)
    per_request = rows.groupby("request_id").size()
    assert set(per_request.index) == set(answers)  # every request answered is logged ...
    assert (per_request == 1).all(), per_request[per_request > 1]  # ... exactly once
    logged = rows.set_index("request_id")["status_code"]
    assert (logged.sort_index() == statuses(answers).sort_index()).all()  # as it was answered
    return rows


def customer_bodies(n: int, prefix: str = "r") -> list[bytes]:
    record = json.loads(body())["dataframe_records"][0]
    return [
        json.dumps({"dataframe_records": [{**record, "customer_id": i % 50 + 1}], "client_request_id": f"{prefix}-{i}"})
        .encode()
        for i in range(n)
    ]


def test_a_feast_outage_shorter_than_the_deadline_is_waited_out(stack: Settings, demo_assets: object) -> None:
    settings = faulty(stack, "fault-feast-blip", outage_deadline_ms=120_000)
    bodies = customer_bodies(150)
    with running(settings) as worker:
        traffic = Traffic(settings, bodies, per_second=25)
        traffic.start()
        answers_for(settings, 20)  # traffic flows
        with feast_locked(settings):
            until(lambda: worker.loop.stats.scoring_retries >= 2, 60, "lookups failing and retried")
        traffic.join(60)
        answers = answers_for(settings, len(bodies))
        worker.loop.flush()
    assert (statuses(answers) == 200).all()  # nothing refused: the outage was waited out
    assert_logged_once(settings, answers)


def test_a_feast_outage_past_the_deadline_is_answered_503_dead_lettered_and_logged(
    stack: Settings, demo_assets: object
) -> None:
    settings = faulty(stack, "fault-feast-down", outage_deadline_ms=1_000)
    bodies = customer_bodies(150)
    after = customer_bodies(30, "after")
    with running(settings) as worker:
        traffic = Traffic(settings, bodies, per_second=25)
        traffic.start()
        answers_for(settings, 20)
        with feast_locked(settings):
            until(lambda: worker.loop.stats.refused_unavailable >= 10, 90, "requests answered 503")
        traffic.join(60)
        answers_for(settings, len(bodies))
        produce(settings, after, [f"after-{i}".encode() for i in range(len(after))])  # the store is back
        answers = answers_for(settings, len(bodies) + len(after))
        worker.loop.flush()
    seen = statuses(answers)
    assert set(seen) == {200, 503}
    refused = {rid for rid, status in seen.items() if status == 503}
    assert {answers[rid].body["error_code"] for rid in refused} == {"TEMPORARILY_UNAVAILABLE"}
    assert all(a.headers["status"] == "200" for a in answers.values() if (a.key or b"").startswith(b"after-"))
    letters = read_topic(settings, settings.kafka.dead_letter_topic, lambda s: len(s) >= len(refused))
    assert {d.headers["request-id"] for d in letters} == refused
    rows = assert_logged_once(settings, answers)
    assert set(rows.loc[rows.status_code == 503, "error_code"]) == {"TEMPORARILY_UNAVAILABLE"}


@contextlib.contextmanager
def storage_refusing_writes(table: Path) -> Iterator[None]:
    """Today's and tomorrow's partition folders replaced by plain files: every data file the next
    appends write fails with "Not a directory", as a storage that refuses writes would."""
    today = datetime.now(UTC).date()
    blocked = [table / f"date={d.isoformat()}" for d in (today, today + timedelta(days=1))]
    for path in blocked:
        if path.is_dir():
            path.rename(path.with_name(path.name + ".aside"))
        path.write_text("not a folder")
    try:
        yield
    finally:
        for path in blocked:
            path.unlink()
            aside = path.with_name(path.name + ".aside")
            if aside.is_dir():
                aside.rename(path)


def test_a_delta_outage_pauses_consumption_then_logs_every_row_once(stack: Settings, demo_assets: object) -> None:
    settings = faulty(stack, "fault-delta")
    bodies = customer_bodies(120)
    table = Path(settings.inference_table_uri)
    with running(settings) as worker:
        with storage_refusing_writes(table):
            Traffic(settings, bodies, per_second=60).start()
            until(lambda: worker.loop.stats.append_retries >= 5, 60, "appends failing and retried")
            answered_while_down = len(answers_for(settings, 1))
            assert table_rows(settings).empty  # nothing could be logged ...
            assert answered_while_down < len(bodies)  # ... so consumption paused: backpressure
        answers = answers_for(settings, len(bodies))
        worker.loop.flush()
    assert (statuses(answers) == 200).all()
    assert_logged_once(settings, answers)


def test_a_hung_broker_delays_answers_and_loses_none(stack: Settings, demo_assets: object) -> None:
    settings = faulty(stack, "fault-broker-hung", ack_timeout_ms=2000)
    bodies = customer_bodies(200)
    with running(settings) as worker:
        traffic = Traffic(settings, bodies, per_second=20)  # its producer buffers while the broker hangs
        traffic.start()
        answers_for(settings, 20)
        with broker_hung(settings):
            threading.Event().wait(8)  # the outage lasts this long (the fault, not a readiness wait)
        traffic.join(60)
        answers = answers_for(settings, len(bodies))
        worker.loop.flush()
    assert (statuses(answers) == 200).all()
    assert_logged_once(settings, answers)


def test_an_answer_the_topic_refuses_becomes_an_error_answer(stack: Settings, demo_assets: object) -> None:
    name = "fault-answer-size"
    admin = KafkaAdminClient(**stack.kafka.client_options())
    with contextlib.suppress(Exception):  # a rerun in the same state folder finds it
        admin.create_topics([NewTopic(f"t.{name}.responses", 4, 1, topic_configs={"max.message.bytes": "4096"})])
    admin.close()
    settings = faulty(stack, name)
    record = json.loads(body())["dataframe_records"][0]
    big = json.dumps({"dataframe_records": [record] * 400, "client_request_id": "big"}).encode()  # a 10 kB answer
    bodies = [body(customer_id=c) for c in range(1, 6)] + [big] + [body(customer_id=c) for c in range(6, 11)]
    with running(settings) as worker:
        produce(settings, bodies)
        answers = answers_for(settings, len(bodies))
        worker.loop.flush()
    too_large = [a for a in answers.values() if a.headers.get("client-request-id") == "big"]
    assert len(too_large) == 1
    assert too_large[0].headers["status"] == "500"
    assert too_large[0].body["error_code"] == "MAX_RESPONSE_SIZE_EXCEEDED"
    assert sum(a.headers["status"] == "200" for a in answers.values()) == 10
    letters = read_topic(settings, settings.kafka.dead_letter_topic, lambda s: len(s) >= 1)
    assert [d.body["raw"] for d in letters] == [big]  # the original request
    rows = table_rows(settings)
    big_rows = rows[rows.request_id == too_large[0].headers["request-id"]]
    assert len(big_rows) == 400
    assert set(big_rows.error_code) == {"MAX_RESPONSE_SIZE_EXCEEDED"}
    assert len(rows) == 410


def test_a_recreated_requests_topic_is_read_from_its_start(stack: Settings, demo_assets: object) -> None:
    settings = faulty(stack, "fault-recreated")
    with running(settings) as worker:
        produce(settings, customer_bodies(30, "first"))
        first = answers_for(settings, 30)
        worker.loop.flush()
    admin = KafkaAdminClient(**settings.kafka.client_options())
    admin.delete_topics([settings.kafka.requests_topic])
    until(lambda: settings.kafka.requests_topic not in admin.list_topics(), 60, "topic deleted")
    admin.close()
    ensure_topics(settings.kafka, [settings.kafka.requests_topic])
    with running(settings) as worker:
        produce(settings, customer_bodies(20, "second"))  # offsets 0-19 again: all at or below the old versions
        answers = answers_for(settings, 50)
        worker.loop.flush()
    second = {rid: a for rid, a in answers.items() if rid not in first}
    assert sorted(a.headers["client-request-id"] for a in second.values()) == sorted(f"second-{i}" for i in range(20))
    assert (statuses(answers) == 200).all()
    assert_logged_once(settings, answers)


def test_a_hung_model_is_answered_504_and_its_worker_replaced(stack: Settings, demo_assets: object) -> None:
    version = register_model(stack, StallingModel(), "stalling")
    limits = Limits(timeout_s=3, max_batch_size=64, max_batch_wait_ms=20)
    settings = serving(faulty(stack, "fault-hung", limits=limits), "stalling", version, limits)
    with supervised(settings) as supervisor:
        produce(settings, [body(customer_id=c) for c in range(1, 11)])
        answers_for(settings, 10)
        produce(settings, [body(amount=-7)], [b"hang"])
        answers_for(settings, 11)
        until(lambda: supervisor.restarts >= 1, 60, "the stalled worker replaced")
        produce(settings, [body(customer_id=c) for c in range(11, 21)], [f"after-{c}".encode() for c in range(10)])
        answers = answers_for(settings, 21)
    by_key = {a.key: a for a in answers.values()}
    assert by_key[b"hang"].headers["status"] == "504"
    assert by_key[b"hang"].body["error_code"] == "TIMEOUT"
    assert all(by_key[f"after-{c}".encode()].headers["status"] == "200" for c in range(10))
    assert_logged_once(settings, answers)


def test_a_record_that_kills_its_worker_is_quarantined(stack: Settings, demo_assets: object) -> None:
    version = register_model(stack, CrashingModel(), "crashing")
    settings = serving(faulty(stack, "fault-crash", quarantine_after_deaths=1), "crashing", version)
    with supervised(settings) as supervisor:
        good = [body(customer_id=c) for c in range(1, 11)]
        bodies = [*good[:5], body(amount=-9), *good[5:]]
        keys = [f"k{i}".encode() for i in range(5)] + [b"killer"] + [f"k{i}".encode() for i in range(5, 10)]
        produce(settings, bodies, keys)
        answers = answers_for(settings, len(bodies), timeout_s=240)
    by_key = {a.key: a for a in answers.values()}
    assert by_key[b"killer"].headers["status"] == "500"
    assert by_key[b"killer"].body["error_code"] == "QUARANTINED"
    assert all(by_key[f"k{i}".encode()].headers["status"] == "200" for i in range(10))
    assert supervisor.restarts >= 2  # the batch, then the record alone
    letters = read_topic(settings, settings.kafka.dead_letter_topic, lambda s: len(s) >= 1)
    assert [d.headers["error-code"] for d in letters] == ["QUARANTINED"]
    assert_logged_once(settings, answers)
