"""Bearer tokens (stored hashed) and the network allowlist; answers and logs say nothing more."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import httpx
import pandas as pd
import pytest
from http_helpers import Server, http_settings_for, post, serving

from lakeserve.errors import ConfigError
from lakeserve.jobs.demo_data import request_bodies
from lakeserve.pipelines.auth import token_digest
from lakeserve.pipelines.http import listen_settings
from lakeserve.pipelines.http_settings import HttpSettings
from lakeserve.settings import Settings

TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="module")
def guarded(stack: Settings, demo_assets: object) -> Iterator[Server]:
    http = {"access_control": True, "token_sha256": [token_digest(TOKEN)], "allow_cidrs": ["127.0.0.0/8"]}
    with serving(http_settings_for(stack, "rest-guarded", http=http)) as server:
        yield server


@pytest.fixture(scope="module")
def walled(stack: Settings, demo_assets: object) -> Iterator[Server]:
    http = {"access_control": True, "allow_cidrs": ["10.0.0.0/8", "fd00::/8"]}
    with serving(http_settings_for(stack, "rest-walled", http=http)) as server:
        yield server


def body(demo_assets: object) -> bytes:
    return request_bodies(pd.read_parquet(demo_assets.data_dir / "customers.parquet"), 1)[0]  # type: ignore[attr-defined]


def test_token_required_and_checked(guarded: Server, demo_assets: object, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": f"Basic {TOKEN}"}):
        answer = post(guarded, body(demo_assets), headers)
        assert answer.status_code == 401
        assert answer.json() == {
            "error_code": "UNAUTHENTICATED",
            "message": "authentication required",
            "request_id": answer.headers["x-request-id"],
        }
        assert answer.headers["www-authenticate"] == "Bearer"
    ok = post(guarded, body(demo_assets), {"authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200, ok.text
    assert TOKEN not in ok.text
    for path in ("/metrics", "/dashboard", "/dashboard/data"):
        assert httpx.get(f"{guarded.url}{path}").status_code == 401
        assert httpx.get(f"{guarded.url}{path}", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert httpx.get(f"{guarded.url}/health").status_code == 200  # probes stay open
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert TOKEN not in logged
    assert token_digest(TOKEN) not in logged


def test_address_outside_the_allowlist_is_forbidden(walled: Server, demo_assets: object) -> None:
    answer = post(walled, body(demo_assets))
    assert answer.status_code == 403
    assert answer.json() == {
        "error_code": "PERMISSION_DENIED",
        "message": "access denied",
        "request_id": answer.headers["x-request-id"],
    }
    assert httpx.get(f"{walled.url}/metrics").status_code == 403
    assert httpx.get(f"{walled.url}/ready").status_code == 200


def test_off_on_loopback_on_elsewhere_and_never_open_by_accident() -> None:
    assert not HttpSettings().access_enabled
    assert HttpSettings(host="0.0.0.0", allow_cidrs=["10.0.0.0/8"], plaintext_public=True).access_enabled
    with pytest.raises(ValueError, match="neither token_sha256 nor allow_cidrs"):
        HttpSettings(host="0.0.0.0")
    with pytest.raises(ConfigError, match="neither token_sha256 nor allow_cidrs"):
        listen_settings(HttpSettings(), "0.0.0.0", None)  # --host on the command line is checked too
    assert HttpSettings(host="0.0.0.0", access_control=False, plaintext_public=True).access_enabled is False
    with pytest.raises(ValueError, match="SHA-256"):
        HttpSettings(token_sha256=["not-a-digest"])
