"""The REST path follows endpoint updates as the Kafka path does: a published traffic change is
swapped in between micro-batches with no failed request."""

from __future__ import annotations

import os
import time
from typing import Any

import pandas as pd
from http_helpers import http_settings_for, post, serving, wait_until

from lakeserve.jobs.demo_data import request_bodies
from lakeserve.pipelines.updates import publish, read_status
from lakeserve.scoring.settings import Route, TrafficConfig
from lakeserve.settings import Settings


def test_rest_follows_a_published_traffic_change(stack: Settings, demo_assets: Any) -> None:
    base = http_settings_for(stack, "rest-swap")  # and below, a control file of its own
    settings = base.model_copy(update={"endpoint": base.endpoint.model_copy(update={"name": "fraud-rest-swap"})})
    customers = pd.read_parquet(demo_assets.data_dir / "customers.parquet")
    bodies = request_bodies(customers, 60, seed=61)
    all_challenger = settings.endpoint.model_copy(
        update={"traffic_config": TrafficConfig(routes=[Route(served_model_name="champion", traffic_percentage=0),
                                                        Route(served_model_name="challenger", traffic_percentage=100)])}
    )  # fmt: skip
    with serving(settings) as server:
        before = [post(server, body) for body in bodies]
        published = time.time()
        publish(all_challenger, settings.stack.state_dir, settings.mlflow)
        during: list[Any] = []

        def applied() -> bool:  # the swap happens before a micro-batch: keep the requests coming
            during.append(post(server, bodies[len(during) % len(bodies)]))
            status = read_status(settings.stack.state_dir, settings.endpoint.name) or {}
            return (
                status.get("pid") == os.getpid()
                and status.get("state") == "applied"
                and (float(str(status.get("at_epoch"))) >= published)
            )

        wait_until(applied, 60, "the REST server did not apply the update")
        after = [post(server, body) for body in bodies]

    assert {a.status_code for a in before + during + after} == {200}  # no failed request
    assert {a.headers["served-model-name"] for a in before} == {"champion", "challenger"}
    assert {a.headers["served-model-name"] for a in after} == {"challenger"}
