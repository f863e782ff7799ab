"""Bad bodies, unknown endpoints, the 16 MB cap and timeouts answer status codes, never a stack trace."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pandas as pd
import pytest
from http_helpers import Server, http_settings_for, post, raw_exchange, serving

from lakeserve.jobs.demo_data import request_bodies
from lakeserve.scoring.settings import Limits
from lakeserve.settings import Settings

CAP = 16 * 1024 * 1024


def assert_error(answer: httpx.Response, status: int, code: str) -> None:
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert set(body) == {"error_code", "message", "request_id"}, body
    assert body["error_code"] == code
    assert answer.headers["x-request-id"] == body["request_id"]
    assert "Traceback" not in answer.text
    assert 'File "' not in answer.text


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "BAD_REQUEST"),
        (b"[1, 2]", 400, "BAD_REQUEST"),
        ({"columns": ["a"]}, 400, "BAD_REQUEST"),
        ({"dataframe_records": [{"customer_id": 1}], "inputs": {"customer_id": [1]}}, 400, "BAD_REQUEST"),
        ({"instances": [[1, 2, 3]]}, 400, "BAD_REQUEST"),
        (b'{"dataframe_records": [{"customer_id": 1, "amount": NaN}]}', 400, "INVALID_PARAMETER_VALUE"),
        ({"dataframe_records": [{"amount": 3.0}]}, 400, "INVALID_PARAMETER_VALUE"),
        ({"dataframe_records": [{"customer_id": 10**9, "amount": 3.0}]}, 404, "RESOURCE_DOES_NOT_EXIST"),
        (b"", 400, "BAD_REQUEST"),
    ],
)
def test_bad_bodies(rest: Server, body: Any, status: int, code: str) -> None:
    assert_error(post(rest, body), status, code)


def test_unknown_endpoint_path_and_method(rest: Server) -> None:
    unknown = httpx.post(f"{rest.url}/serving-endpoints/nope/invocations", content=b"{}")
    assert_error(unknown, 404, "RESOURCE_DOES_NOT_EXIST")
    assert_error(httpx.get(f"{rest.url}/nowhere"), 404, "RESOURCE_DOES_NOT_EXIST")
    assert_error(httpx.get(rest.invocations), 405, "BAD_REQUEST")


def test_over_the_cap_refused_from_content_length_without_reading(rest: Server) -> None:
    head = (
        f"POST /serving-endpoints/{rest.settings.endpoint.name}/invocations HTTP/1.1\r\n"
        f"Host: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {CAP + 1}\r\n\r\n"
    ).encode()
    answer = raw_exchange(rest.port, head)  # no body sent: the announced size is enough
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["error_code"] == "MAX_REQUEST_SIZE_EXCEEDED"


def test_over_the_cap_refused_while_streaming(rest: Server) -> None:
    head = (
        f"POST /serving-endpoints/{rest.settings.endpoint.name}/invocations HTTP/1.1\r\n"
        "Host: 127.0.0.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()

    def chunks() -> Iterator[bytes]:  # cap + 1 bytes in 1 MiB chunks, never finished
        left = CAP + 1
        while left:
            size = min(left, 1024 * 1024)
            yield f"{size:x}\r\n".encode() + b" " * size + b"\r\n"
            left -= size

    answer = raw_exchange(rest.port, head, chunks())
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["error_code"] == "MAX_REQUEST_SIZE_EXCEEDED"


def test_just_under_the_cap_is_read(rest: Server) -> None:
    padding = " " * (CAP - 200)
    body = ('{"dataframe_records": [{"customer_id": 1, "amount": 3.0}]' + padding + "}").encode()
    assert len(body) <= CAP
    answer = post(rest, body)
    assert answer.status_code != 413, answer.text


@pytest.fixture
def slow(stack: Settings, demo_assets: object) -> Iterator[Server]:
    limits = Limits(timeout_s=0.001)
    with serving(http_settings_for(stack, "rest-timeout", limits=limits)) as server:
        yield server


def test_past_the_timeout_answers_504(slow: Server, demo_assets: Any) -> None:
    customers = pd.read_parquet(demo_assets.data_dir / "customers.parquet")
    answer = post(slow, request_bodies(customers, 1)[0])
    assert_error(answer, 504, "TIMEOUT")
