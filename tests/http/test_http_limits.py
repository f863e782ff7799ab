"""Bounded work: a full queue answers 503 with Retry-After, a request past its deadline is answered
504 and never scored, and a client over its rate is answered 429 with Retry-After."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pandas as pd
import pytest
from http_helpers import Server, http_settings_for, metric, post, serving, table_rows, wait_until
from registered_models import GOOD, register_model

from lakeserve.jobs.demo_data import request_bodies
from lakeserve.pipelines.auth import token_digest
from lakeserve.pipelines.http_settings import HttpSettings, RateLimit
from lakeserve.pipelines.rate_limit import RateLimiter
from lakeserve.scoring.settings import Limits, Route, ServedEntity, TrafficConfig
from lakeserve.scoring.testing_models import SLOW_PARAMS, SlowModel
from lakeserve.settings import Settings

SLOW_TOKEN, FAST_TOKEN = "token-with-the-default-limit", "token-with-a-higher-limit"


@pytest.fixture(scope="module")
def body(demo_assets: object) -> bytes:
    return request_bodies(pd.read_parquet(demo_assets.data_dir / "customers.parquet"), 1)[0]  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def slow_model(stack: Settings, demo_assets: object) -> str:
    """``SlowModel``: a request with ``params: {"sleep_s": s}`` keeps the scorer busy ``s`` seconds."""
    return register_model(stack, SlowModel(), "slow-http", params=SLOW_PARAMS)


def slow_server(stack: Settings, slow_model: str, name: str, limits: Limits, **http: Any) -> Any:
    entity = ServedEntity(name="slow", entity_name="slow-http", entity_version=slow_model)
    routes = TrafficConfig(routes=[Route(served_model_name="slow", traffic_percentage=100)])
    settings = http_settings_for(stack, name, http=http, served_entities=[entity], traffic_config=routes, limits=limits)
    return serving(settings)


def sleeping(seconds: float) -> dict[str, Any]:
    return {"dataframe_records": [GOOD], "params": {"sleep_s": seconds}}


@pytest.fixture
def tiny_queue(stack: Settings, slow_model: str) -> Iterator[Server]:
    """Two requests fill the queue (``http.max_queued``); the first keeps the scorer busy 3 s."""
    with slow_server(stack, slow_model, "rest-queue", Limits(timeout_s=10), max_queued=2) as server:
        yield server


def test_a_full_queue_answers_503_with_retry_after(tiny_queue: Server) -> None:
    held: dict[str, httpx.Response] = {}

    def send(name: str, body: dict[str, Any]) -> None:
        held[name] = post(tiny_queue, body)

    first = threading.Thread(target=send, args=("first", sleeping(3)))
    first.start()
    wait_until(lambda: metric(tiny_queue, "lakeserve_http_queued") == 1, 30, "the first request is not queued")
    second = threading.Thread(target=send, args=("second", sleeping(0)))
    second.start()
    wait_until(lambda: metric(tiny_queue, "lakeserve_http_queued") == 2, 30, "the second request is not queued")
    refused = post(tiny_queue, sleeping(0))
    assert refused.status_code == 503, refused.text
    assert refused.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["request_id"] == refused.headers["x-request-id"]
    first.join(60)
    second.join(60)
    assert held["first"].status_code == 200, held["first"].text  # scored in its 3 s
    assert held["second"].status_code == 200, held["second"].text  # queued behind it, then scored
    wait_until(lambda: metric(tiny_queue, "lakeserve_http_queued") == 0, 30, "the queue did not empty")


@pytest.fixture
def expiring(stack: Settings, slow_model: str) -> Iterator[Server]:
    """A deadline of 0.5 s and a first request whose model call takes 2 s."""
    with slow_server(stack, slow_model, "rest-expiring", Limits(timeout_s=0.5)) as server:
        yield server


def test_requests_past_their_deadline_are_answered_504_and_none_is_lost(expiring: Server) -> None:
    """The slow call is given up at its deadline (504); the requests queued behind it are either
    dropped unscored (their caller was answered 504 at the deadline) or scored past it and logged
    as 504: each is one or the other (tests/http/test_http_batcher.py pins which, deterministically)."""
    answers: dict[int, httpx.Response] = {}

    def send(i: int, body: dict[str, Any]) -> None:
        answers[i] = post(expiring, body)

    busy = threading.Thread(target=send, args=(0, sleeping(2)))
    busy.start()
    wait_until(lambda: metric(expiring, "lakeserve_http_queued") == 1, 30, "the slow request is not queued")
    behind = [threading.Thread(target=send, args=(i, sleeping(0))) for i in (1, 2, 3)]
    for t in behind:
        t.start()
    for t in [busy, *behind]:
        t.join(60)
    assert [answers[i].status_code for i in range(4)] == [504] * 4
    assert all(answers[i].json()["error_code"] == "TIMEOUT" for i in range(4))

    def accounted() -> bool:
        dropped = metric(expiring, "lakeserve_requests_dropped_total")
        return dropped + metric(expiring, "lakeserve_inference_rows_logged_total") == 4

    wait_until(accounted, 30, "a request was neither logged nor counted as dropped")
    rows = table_rows(expiring.settings)
    assert set(rows["status_code"]) == {504}, rows


@pytest.fixture(scope="module")
def limited(stack: Settings, demo_assets: object) -> Iterator[Server]:
    http = {
        "access_control": True,
        "token_sha256": [token_digest(SLOW_TOKEN), token_digest(FAST_TOKEN)],
        "rate_limit": {"requests_per_s": 0.001, "burst": 2},  # two, then one more in ~1000 s
        "token_rate_limits": {token_digest(FAST_TOKEN): {"requests_per_s": 1000, "burst": 100}},
    }
    with serving(http_settings_for(stack, "rest-limited", http=http)) as server:
        yield server


def test_a_burst_over_the_bucket_answers_429_and_another_token_is_unaffected(limited: Server, body: bytes) -> None:
    slow = {"authorization": f"Bearer {SLOW_TOKEN}"}
    assert [post(limited, body, slow).status_code for _ in range(2)] == [200, 200]
    over = post(limited, body, slow)
    assert over.status_code == 429, over.text
    assert over.json()["error_code"] == "REQUEST_LIMIT_EXCEEDED"
    assert 1 <= int(over.headers["retry-after"]) <= 1000
    assert over.json()["request_id"] == over.headers["x-request-id"]
    fast = {"authorization": f"Bearer {FAST_TOKEN}"}
    assert [post(limited, body, fast).status_code for _ in range(5)] == [200] * 5
    assert post(limited, body, {"authorization": "Bearer unknown"}).status_code == 401  # guard first, no bucket


def test_the_bucket_refills_at_its_rate() -> None:
    now = [0.0]
    limiter = RateLimiter(HttpSettings(rate_limit=RateLimit(requests_per_s=2, burst=3)), clock=lambda: now[0])
    client = ("10.0.0.1", {})
    assert [limiter.admit(*client) for _ in range(4)] == [None, None, None, 1]
    now[0] = 0.5  # one token back
    assert [limiter.admit(*client) for _ in range(2)] == [None, 1]
    assert limiter.admit("10.0.0.2", {}) is None  # another client, another bucket
    now[0] = 100.0  # never more than the burst
    assert [limiter.admit(*client) for _ in range(4)] == [None, None, None, 1]
    assert RateLimiter(HttpSettings()).admit("10.0.0.1", {}) is None  # no limit by default
