"""Forwarding headers are believed only from ``http.trusted_proxies``: by default from no peer,
loopback included; the guard and the rate limiter then see the address the proxy forwarded.

The server listens on 127.0.0.1; clients connect from 127.0.0.1 (the trusted proxy) or from
127.0.0.2 (another peer on loopback, untrusted)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pandas as pd
import pytest
from http_helpers import Server, http_settings_for, serving
from pydantic import ValidationError

from lakeserve.jobs.demo_data import request_bodies
from lakeserve.pipelines.http_settings import HttpSettings
from lakeserve.settings import Settings

ALLOWED, OUTSIDE = "10.1.2.3", "192.0.2.9"


@pytest.fixture(scope="module")
def behind_proxy(stack: Settings, demo_assets: object) -> Iterator[Server]:
    http = {"access_control": True, "allow_cidrs": ["10.0.0.0/8"], "trusted_proxies": ["127.0.0.1/32"],
            "rate_limit": {"requests_per_s": 0.001, "burst": 1}}  # fmt: skip
    with serving(http_settings_for(stack, "rest-proxied", http=http)) as server:
        yield server


@pytest.fixture(scope="module")
def no_proxy(stack: Settings, demo_assets: object) -> Iterator[Server]:
    http = {"access_control": True, "allow_cidrs": ["10.0.0.0/8"]}
    with serving(http_settings_for(stack, "rest-unproxied", http=http)) as server:
        yield server


@pytest.fixture(scope="module")
def body(demo_assets: object) -> bytes:
    return request_bodies(pd.read_parquet(demo_assets.data_dir / "customers.parquet"), 1)[0]  # type: ignore[attr-defined]


def call(server: Server, body: bytes, source: str, forwarded_for: str | None = None) -> httpx.Response:
    headers = {"content-type": "application/json"}
    if forwarded_for is not None:
        headers["x-forwarded-for"] = forwarded_for
    with httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=60) as client:
        return client.post(server.invocations, content=body, headers=headers)


def test_forwarded_for_believed_from_a_trusted_proxy_only(behind_proxy: Server, body: bytes) -> None:
    assert call(behind_proxy, body, "127.0.0.1", ALLOWED).status_code == 200  # the proxy forwards an allowed client
    assert call(behind_proxy, body, "127.0.0.1", OUTSIDE).status_code == 403  # ... or one outside allow_cidrs
    assert call(behind_proxy, body, "127.0.0.1").status_code == 403  # the proxy itself is not in allow_cidrs
    spoofed = call(behind_proxy, body, "127.0.0.2", "10.9.9.9")  # an untrusted peer claims an allowed address
    assert spoofed.status_code == 403, spoofed.text
    # a client cannot prepend an allowed address either: the right-most untrusted hop is the client
    assert call(behind_proxy, body, "127.0.0.1", f"10.7.7.7, {OUTSIDE}").status_code == 403


def test_the_rate_limit_counts_the_forwarded_client(behind_proxy: Server, body: bytes) -> None:
    first, second = "10.20.0.1", "10.20.0.2"  # burst 1, next token in ~1000 s: one request each
    assert call(behind_proxy, body, "127.0.0.1", first).status_code == 200
    again = call(behind_proxy, body, "127.0.0.1", first)
    assert again.status_code == 429, again.text
    assert again.json()["error_code"] == "REQUEST_LIMIT_EXCEEDED"
    assert int(again.headers["retry-after"]) >= 1
    assert call(behind_proxy, body, "127.0.0.1", second).status_code == 200  # another client, another bucket


def test_no_forwarding_header_is_believed_by_default_not_even_from_loopback(no_proxy: Server, body: bytes) -> None:
    for source in ("127.0.0.1", "127.0.0.2"):
        answer = call(no_proxy, body, source, ALLOWED)
        assert answer.status_code == 403, (source, answer.text)


def test_trusted_proxies_are_validated_and_named() -> None:
    with pytest.raises(ValidationError, match="trusted_proxies") as raised:
        HttpSettings(trusted_proxies=["10.0.0.0/8", "not-a-network"])
    assert "'not-a-network' is not a network (CIDR)" in str(raised.value)
    assert HttpSettings(trusted_proxies=["10.0.0.7/8"]).trusted_proxies == ["10.0.0.0/8"]
    with pytest.raises(ValidationError, match="trusted_proxies"):
        HttpSettings(trusted_proxies=["*"])
