"""Workers killed with SIGKILL at random points while 5,000 requests flow: every request is
answered at least once and every record is in the inference table exactly once."""

from __future__ import annotations

import os
import random
import signal
import threading

import pandas as pd
from conftest_helpers import ResponseCollector, produce_tracked, settings_for, table_rows, topic_id

from lakeserve.jobs.demo_data import request_bodies
from lakeserve.pipelines.kafka_source import request_id
from lakeserve.pipelines.supervisor import Supervisor
from lakeserve.scoring.settings import Limits
from lakeserve.settings import Settings

REQUESTS = 5000
KILLS = 4


def test_sigkilled_workers_lose_nothing_and_log_once(stack: Settings, demo_assets) -> None:
    settings = settings_for(stack, "chaos", limits=Limits(max_batch_size=100, max_batch_wait_ms=20))
    settings = settings.model_copy(update={
        "tables": settings.tables.model_copy(update={"flush_rows": 300, "flush_interval_ms": 500})})
    customers = pd.read_parquet(demo_assets.data_dir / "customers.parquet")
    bodies = request_bodies(customers, REQUESTS, seed=21)
    rng = random.Random(7)
    thresholds = sorted(rng.sample(range(300, REQUESTS - 300), KILLS))  # kill points, by progress

    supervisor = Supervisor(settings, 2, restart_backoff_s=0.2)
    stopped = threading.Event()
    runner = threading.Thread(target=supervisor.run, args=(stopped,), daemon=True)
    runner.start()
    collector = ResponseCollector(settings)
    killed: list[int] = []
    try:
        positions = produce_tracked(settings, bodies)
        for threshold in thresholds:
            collector.wait_for(threshold, timeout_s=240)
            victim = rng.choice(supervisor.pids())
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)
        collector.wait_for(REQUESTS, timeout_s=300)
    finally:
        stopped.set()
        runner.join(timeout=120)
        collector.close()

    assert not runner.is_alive(), "the supervisor could not stop its workers"
    group, topic, identity = settings.kafka.group_id, settings.kafka.requests_topic, topic_id(settings)
    expected = {request_id(group, topic, p, o, identity) for p, o in positions}
    assert len(killed) == KILLS
    assert supervisor.restarts >= KILLS
    assert set(collector.counts) == expected  # every request answered at least once
    assert all(s == {"200"} for s in collector.statuses.values())
    rows = table_rows(settings)
    per_request = rows.groupby("request_id").size()
    assert set(per_request.index) == expected  # every record logged ...
    assert (per_request == 1).all(), per_request[per_request > 1].head()  # ... exactly once
    assert rows.groupby(["kafka_partition", "kafka_offset"]).size().max() == 1
