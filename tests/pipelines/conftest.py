"""Fixtures for the streaming service against the real broker, Feast, MLflow and Delta."""

from __future__ import annotations

import pytest
from conftest_helpers import settings_for

from lakeserve.settings import Settings


@pytest.fixture
def service_settings(stack: Settings, demo_assets: object, request: pytest.FixtureRequest) -> Settings:
    return settings_for(stack, request.node.name.replace("_", "-").replace("[", "-").rstrip("]")[:60])
