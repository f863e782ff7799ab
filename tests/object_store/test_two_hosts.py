"""Two hosts: two `lakeserve serve` processes, each with its own state folder, share one broker,
one object store (the inference table), one MLflow registry and Redis for Feast. The group
balances the partitions between them; one host dies (its processes SIGKILLed together) while
requests flow, the other takes its partitions, every request is answered and every record is in
the table exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pytest
from conftest_helpers import ResponseCollector, produce_tracked, settings_for, topic_id
from deltalake import DeltaTable
from http_helpers import wait_until
from kafka import KafkaAdminClient
from kafka.errors import KafkaError
from netutil import free_ports
from pydantic import SecretStr
from store_helpers import on_store

from lakeserve.features import demo_repo
from lakeserve.features.store import apply_definitions, feature_store
from lakeserve.jobs.demo_data import request_bodies
from lakeserve.pipelines.embedded.seaweedfs import SeaweedS3
from lakeserve.pipelines.embedded.services import RedisServer
from lakeserve.pipelines.kafka_source import request_id
from lakeserve.pipelines.settings import write_settings
from lakeserve.settings import Settings

if TYPE_CHECKING:
    from lakeserve.jobs.demo import DemoReport

REQUESTS = 1500
KILL_AFTER = 400


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(free_ports(1)[0], tmp_path_factory.mktemp("redis-hosts"))
    server.start()
    yield server
    assert server.stop()


@pytest.fixture(scope="module")
def hosts_settings(
    stack: Settings, demo_assets: DemoReport, object_store: SeaweedS3, redis: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Settings:  # fmt: skip
    """The deployment both hosts run: the table on the store, Feast's online store in Redis."""
    assert demo_assets.data_dir is not None
    feast = stack.feast.model_copy(update={
        "project": "lakeserve_hosts", "repo_path": tmp_path_factory.mktemp("feast-hosts"),
        "online_store": "redis", "redis_connection_string": SecretStr(f"127.0.0.1:{redis.port}"),
    })  # fmt: skip
    store = feature_store(feast)
    apply_definitions(store, demo_repo.definitions(demo_assets.data_dir / "customers.parquet"))
    store.materialize_incremental(end_date=datetime.now(UTC))
    settings = on_store(settings_for(stack, "two-hosts"), object_store, "hosts")
    return settings.model_copy(update={"feast": feast})


@contextmanager
def host(settings: Settings, folder: Path) -> Iterator[subprocess.Popen[str]]:
    """`lakeserve serve --workers 1` with a state folder of its own, in a process group of its own."""
    own = settings.model_copy(update={"stack": settings.stack.model_copy(update={"state_dir": folder / "state"})})
    config = write_settings(own, folder / "lakeserve.yaml")
    with (folder / "serve.log").open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lakeserve.cli", "--config", str(config), "serve", "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(30)


def assignment(settings: Settings) -> list[list[int]]:
    """The requests-topic partitions of each member of the group, as its coordinator has them once
    the group is stable; [] before that (no coordinator yet, a rebalance under way)."""
    admin = KafkaAdminClient(**settings.kafka.client_options())
    try:
        group = admin.describe_groups([settings.kafka.group_id])[settings.kafka.group_id]
    except KafkaError:
        return []
    finally:
        admin.close()
    if group.get("group_state") != "Stable":
        return []
    members = []
    for member in group.get("members", []):
        owned = (member.get("member_assignment") or {}).get("assigned_partitions", [])
        members.append(sorted(p for t in owned if t["topic"] == settings.kafka.requests_topic for p in t["partitions"]))
    return sorted(members)


def test_partitions_balance_between_two_hosts_and_move_when_one_dies(
    hosts_settings: Settings, demo_assets: DemoReport, tmp_path: Path
) -> None:
    settings = hosts_settings
    partitions = list(range(settings.kafka.partitions))
    assert demo_assets.data_dir is not None
    customers = pd.read_parquet(demo_assets.data_dir / "customers.parquet")
    collector = ResponseCollector(settings)
    with ExitStack() as hosts:
        a = hosts.enter_context(host(settings, tmp_path / "host-a"))
        hosts.enter_context(host(settings, tmp_path / "host-b"))
        half = len(partitions) // 2
        wait_until(lambda: [len(m) for m in assignment(settings)] == [half, half], 180,
                   "the two hosts did not share the partitions")  # fmt: skip
        assert sorted(p for m in assignment(settings) for p in m) == partitions

        positions = produce_tracked(settings, request_bodies(customers, REQUESTS, seed=83, prefix="hosts"))
        collector.wait_for(KILL_AFTER, timeout_s=240)
        os.killpg(a.pid, signal.SIGKILL)  # the host is gone: supervisor and worker at once
        a.wait(30)
        wait_until(lambda: assignment(settings) == [partitions], 120, "the other host did not take every partition")
        collector.wait_for(REQUESTS, timeout_s=300)
    collector.close()

    group, topic, identity = settings.kafka.group_id, settings.kafka.requests_topic, topic_id(settings)
    expected = {request_id(group, topic, p, o, identity) for p, o in positions}
    assert set(collector.counts) == expected  # every request answered, some of them twice (at least once)
    assert all(s == {"200"} for s in collector.statuses.values())
    rows = DeltaTable(settings.inference_table_uri, storage_options=settings.tables.delta_storage_options()).to_pandas()
    per_request = rows.groupby("request_id").size()
    assert set(per_request.index) == expected  # every record logged ...
    assert (per_request == 1).all(), per_request[per_request > 1].head()  # ... exactly once
    assert sorted(rows["kafka_partition"].unique()) == partitions
