"""Session-scoped fixtures for the real components: one broker, one Spark session, one MLflow,
one Feast store per test session, all started by lakeserve's own code."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from lakeserve.pipelines.settings import Settings, load_settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lakeserve-state")


@pytest.fixture(scope="session")
def settings(state_dir: Path) -> Settings:
    """The settings every component fixture shares: embedded defaults on test ports."""
    return load_settings(
        overrides={
            "stack": {"state_dir": str(state_dir), "kafka_port": 19092, "kafka_controller_port": 19093},
            "kafka": {"bootstrap_servers": ["127.0.0.1:19092"], "session_timeout_ms": 6000},
            "spark": {"master": "local[2]", "shuffle_partitions": 2},
            "mlflow": {"ui_port": None},
        }
    )


@pytest.fixture(scope="session")
def spark(settings: Settings) -> Iterator[SparkSession]:
    from lakeserve.jobs.spark import spark_session

    session = spark_session(settings.spark, ivy_dir=settings.stack.cache_dir / "ivy")
    yield session
    session.stop()
