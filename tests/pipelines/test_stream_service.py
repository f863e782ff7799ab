"""Kafka in, Feast features, MLflow models, answers out, every record in Delta exactly once."""

from __future__ import annotations

import json

import pandas as pd
from conftest_helpers import answers_for, produce, running, settings_for, table_rows

from lakeserve.features import demo_repo
from lakeserve.jobs.demo_data import request_bodies
from lakeserve.settings import Settings


def test_requests_answered_with_looked_up_features_and_logged(service_settings: Settings, demo_assets) -> None:
    customers = pd.read_parquet(demo_assets.data_dir / "customers.parquet")
    bodies = request_bodies(customers, 40, seed=3, records_per_request=1)
    bodies += request_bodies(customers, 10, seed=4, records_per_request=3, prefix="multi")  # multi-record requests
    with running(service_settings) as worker:
        produce(service_settings, bodies)
        answers = answers_for(service_settings, len(bodies))
        worker.loop.flush()

    assert len(answers) == len(bodies)
    for a in answers.values():
        assert a.headers["status"] == "200", a.body
        assert set(a.headers["served-model-name"].split(",")) <= {"champion", "challenger"}
        assert a.headers["client-request-id"].split("-")[0] in {"demo", "multi"}
        assert all(0.0 <= p["probability"] <= 1.0 for p in a.body["predictions"])
    by_client = {a.headers["client-request-id"]: a for a in answers.values()}
    assert len(by_client["demo-0"].body["predictions"]) == 1
    assert len(by_client["multi-0"].body["predictions"]) == 3

    rows = table_rows(service_settings)
    assert len(rows) == 40 + 10 * 3  # one row per record
    assert rows.groupby("request_id").size().max() == 3
    assert set(rows["request_id"]) == set(answers)
    assert (rows["status_code"] == 200).all()
    # the features the model saw are the Feast values of the customer
    source = customers.set_index("customer_id")
    merged = rows.set_index("customer_id")[demo_repo.V1_FEATURES]
    pd.testing.assert_frame_equal(
        merged.sort_index(),
        source.loc[merged.index, demo_repo.V1_FEATURES].sort_index(),
        check_dtype=False,
        check_names=False,
    )
    # challenger rows also carry its extra feature; champion rows do not need it
    assert rows.loc[rows.served_entity == "challenger", "home_country"].notna().all()
    # every row knows where it came from and what it answered
    assert rows["kafka_offset"].notna().all()
    assert (rows["transport"] == "kafka").all()
    first = rows.iloc[0]
    assert json.loads(first["response"])["prediction"] in (0, 1)
    assert dict(first["request_metadata"])["endpoint_name"] == service_settings.endpoint.name


def test_routing_is_sticky_per_customer(service_settings: Settings, demo_assets) -> None:
    customers = pd.read_parquet(demo_assets.data_dir / "customers.parquet")
    bodies = request_bodies(customers.head(20), 100, seed=9)
    with running(service_settings) as worker:
        produce(service_settings, bodies)
        answers_for(service_settings, len(bodies))
        worker.loop.flush()
    rows = table_rows(service_settings)
    per_customer = rows.groupby("customer_id")["served_entity"].nunique()
    assert (per_customer == 1).all()
    assert set(rows["served_entity"]) == {"champion", "challenger"}


def test_a_new_worker_joins_with_one_rebalance(stack: Settings, demo_assets) -> None:
    """A worker alone in its group is assigned once and keeps its partitions: kafka-python's
    leader would otherwise see its metadata snapshot "change" right after the first assignment
    and rebalance again (a rebalance in which it has been seen to stall)."""
    settings = settings_for(stack, "one-rebalance")
    customers = pd.read_parquet(demo_assets.data_dir / "customers.parquet")
    with running(settings) as worker:
        produce(settings, request_bodies(customers, 20, seed=71))
        answers = answers_for(settings, 20)
        assert worker.loop.stats.revocations == 0
    assert {a.headers["status"] for a in answers.values()} == {"200"}
