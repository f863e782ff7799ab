"""A real S3-compatible store (SeaweedFS, started by lakeserve's launcher on loopback) for the
whole test session, and settings that put an endpoint's tables on it."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from netutil import free_ports
from store_helpers import ACCESS_KEY, BUCKET, SECRET_KEY

from lakeserve.pipelines.embedded.seaweedfs import SeaweedS3
from lakeserve.settings import Settings

# The stream and REST tests' helpers (in-process worker, produce, answers, a REST server).
sys.path[:0] = [str(Path(__file__).resolve().parents[1] / d) for d in ("pipelines", "http")]


@pytest.fixture(scope="session")
def object_store(tmp_path_factory: pytest.TempPathFactory, settings: Settings) -> Iterator[SeaweedS3]:
    store = SeaweedS3(free_ports(1)[0], tmp_path_factory.mktemp("seaweedfs"), settings.stack.cache_dir,
                      ACCESS_KEY, SECRET_KEY)  # fmt: skip
    store.start()
    store.create_bucket(BUCKET)
    yield store
    store.stop()
