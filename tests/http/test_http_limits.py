"""Bounded work: a full queue answers 503 with Retry-After, a request past its deadline is answered
504 and never scored, and a client over its rate is answered 429 with Retry-After."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pandas as pd
import pytest
from http_helpers import Server, http_settings_for, metric, post, serving, wait_until

from lakeserve.jobs.demo_data import request_bodies
from lakeserve.pipelines.auth import token_digest
from lakeserve.pipelines.http_settings import HttpSettings, RateLimit
from lakeserve.pipelines.rate_limit import RateLimiter
from lakeserve.scoring.settings import Limits
from lakeserve.settings import Settings

SLOW_TOKEN, FAST_TOKEN = "token-with-the-default-limit", "token-with-a-higher-limit"


@pytest.fixture(scope="module")
def body(demo_assets: object) -> bytes:
    return request_bodies(pd.read_parquet(demo_assets.data_dir / "customers.parquet"), 1)[0]  # type: ignore[attr-defined]


@pytest.fixture
def tiny_queue(stack: Settings, demo_assets: object) -> Iterator[Server]:
    """Two requests fill the queue; a batch waits for 100 requests, at most until the first one's
    deadline (5 s): so the first two stay queued while the test knocks."""
    limits = Limits(timeout_s=5, max_batch_size=100, max_batch_wait_ms=60_000)
    with serving(http_settings_for(stack, "rest-queue", http={"max_queued": 2}, limits=limits)) as server:
        yield server


def test_a_full_queue_answers_503_with_retry_after(tiny_queue: Server, body: bytes) -> None:
    held: dict[str, httpx.Response] = {}

    def send(name: str) -> None:
        held[name] = post(tiny_queue, body)

    first = threading.Thread(target=send, args=("first",))
    first.start()
    wait_until(lambda: metric(tiny_queue, "lakeserve_http_queued") == 1, 30, "the first request is not queued")
    second = threading.Thread(target=send, args=("second",))
    second.start()
    wait_until(lambda: metric(tiny_queue, "lakeserve_http_queued") == 2, 30, "the second request is not queued")
    refused = post(tiny_queue, body)
    assert refused.status_code == 503, refused.text
    assert refused.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["request_id"] == refused.headers["x-request-id"]
    first.join(60)
    second.join(60)
    assert held["first"].status_code == 504  # its deadline passed while it waited for a full batch
    assert held["second"].status_code in (200, 504)  # scored or not, depending on a few microseconds
    wait_until(lambda: metric(tiny_queue, "lakeserve_http_queued") == 0, 30, "the queue did not empty")


@pytest.fixture
def expiring(stack: Settings, demo_assets: object) -> Iterator[Server]:
    """Every request's deadline (1 ms) passes while it waits for its batch (up to 20 ms)."""
    limits = Limits(timeout_s=0.001, max_batch_wait_ms=20)
    with serving(http_settings_for(stack, "rest-expiring", limits=limits)) as server:
        yield server


def test_a_request_past_its_deadline_is_answered_504_and_never_scored(expiring: Server, body: bytes) -> None:
    answers = [post(expiring, body) for _ in range(3)]
    assert [a.status_code for a in answers] == [504, 504, 504]
    assert all(a.json()["error_code"] == "TIMEOUT" for a in answers)
    wait_until(lambda: metric(expiring, "lakeserve_requests_dropped_total") == 3, 30, "the requests were not dropped")
    assert metric(expiring, "lakeserve_batch_size_requests_count") == 0  # no batch was scored
    assert metric(expiring, "lakeserve_inference_rows_logged_total") == 0  # and no row logged


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
