"""Fixtures for the REST server: a real uvicorn server on a free loopback port per settings."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from http_helpers import Server, http_settings_for, serving

from lakeserve.settings import Settings


@pytest.fixture(scope="session")
def rest(stack: Settings, demo_assets: object) -> Iterator[Server]:
    """The demo endpoint (champion 80 %, challenger 20 %) served over REST for the whole session."""
    with serving(http_settings_for(stack, "rest-shared")) as server:
        yield server
