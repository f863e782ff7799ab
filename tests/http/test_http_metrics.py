"""Prometheus series move with traffic on both transports; HTTP rows land in the inference table."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pandas as pd
from http_helpers import Server, metric, post, table_rows, wait_until
from kafka import KafkaProducer
from prometheus_client import CollectorRegistry

from lakeserve.jobs.demo_data import request_bodies
from lakeserve.pipelines.embedded.kafka import ensure_topics
from lakeserve.pipelines.metrics import ServiceMetrics
from lakeserve.pipelines.supervisor import Supervisor
from lakeserve.pipelines.worker import build_worker
from lakeserve.settings import Settings


def test_metrics_move_after_requests(rest: Server, demo_assets: Any) -> None:
    customers = pd.read_parquet(demo_assets.data_dir / "customers.parquet")
    ep = rest.settings.endpoint.name
    before_ok = metric(rest, "lakeserve_requests_total", endpoint=ep, transport="http", status_code="200")
    before_bad = metric(rest, "lakeserve_errors_total", endpoint=ep, error_code="BAD_REQUEST")
    before_batches = metric(rest, "lakeserve_batch_size_requests_count", endpoint=ep, transport="http")
    for body in request_bodies(customers, 6, seed=31):
        assert post(rest, body).status_code == 200
    assert post(rest, b"{oops").status_code == 400

    assert metric(rest, "lakeserve_requests_total", endpoint=ep, transport="http", status_code="200") == before_ok + 6
    assert metric(rest, "lakeserve_errors_total", endpoint=ep, error_code="BAD_REQUEST") == before_bad + 1
    assert metric(rest, "lakeserve_batch_size_requests_count", endpoint=ep, transport="http") > before_batches
    for entity in ("champion", "challenger"):
        labels = {"endpoint": ep, "served_entity": entity, "transport": "http"}
        if metric(rest, "lakeserve_requests_total", **labels):
            assert metric(rest, "lakeserve_model_latency_seconds_count", **labels) > 0
            assert metric(rest, "lakeserve_overhead_latency_seconds_count", **labels) > 0
            assert metric(rest, "lakeserve_request_latency_seconds_sum", **labels) > 0
    wait_until(
        lambda: metric(rest, "lakeserve_inference_table_flush_delay_seconds_count", transport="http") > 0,
        30,
        "no HTTP flush was measured",
    )


def test_http_rows_land_in_the_inference_table(rest: Server, demo_assets: Any) -> None:
    customers = pd.read_parquet(demo_assets.data_dir / "customers.parquet")
    tag = uuid.uuid4().hex[:8]
    bodies = request_bodies(customers, 5, seed=41, records_per_request=2, prefix=tag)
    request_ids = set()
    for body in bodies:
        answer = post(rest, body)
        assert answer.status_code == 200
        request_ids.add(answer.headers["x-request-id"])
    bad = {"dataframe_records": [{"amount": 1.0}], "client_request_id": f"{tag}-bad"}
    assert post(rest, bad).status_code == 400

    def logged() -> pd.DataFrame:
        rows = table_rows(rest.settings)
        return rows[rows["client_request_id"].fillna("").str.startswith(tag)]

    wait_until(lambda: len(logged()) == 5 * 2 + 1, 30, "the HTTP rows did not land")
    rows = logged()
    assert (rows["transport"] == "http").all()
    assert rows["kafka_offset"].isna().all()
    assert rows["kafka_topic"].isna().all()
    ok = rows[rows["status_code"] == 200]
    assert set(ok["request_id"]) == request_ids
    assert ok.groupby("request_id").size().eq(2).all()
    assert set(ok["served_entity"]) <= {"champion", "challenger"}
    assert ok["avg_amount_30d"].notna().all()  # the looked-up features are logged
    bad = rows[rows["status_code"] == 400]
    assert list(bad["error_code"]) == ["INVALID_PARAMETER_VALUE"]


def kafka_settings(stack: Settings, tag: str) -> Settings:
    """Topics, group and inference table of this test's own."""
    name = f"{tag}-{uuid.uuid4().hex[:6]}"
    kafka = stack.kafka.model_copy(
        update={"requests_topic": f"t.{name}.requests", "responses_topic": f"t.{name}.responses",
                "dead_letter_topic": f"t.{name}.dead", "group_id": f"g-{name}"}
    )  # fmt: skip
    capture = stack.endpoint.auto_capture_config.model_copy(update={"table_name_prefix": name.replace("-", "_")})
    tables = stack.tables.model_copy(update={"flush_rows": 50, "flush_interval_ms": 200})
    settings = stack.model_copy(
        update={"kafka": kafka, "tables": tables,
                "endpoint": stack.endpoint.model_copy(update={"auto_capture_config": capture})}
    )  # fmt: skip
    ensure_topics(settings.kafka)
    return settings


def produce_requests(settings: Settings, customers: pd.DataFrame, count: int) -> None:
    producer = KafkaProducer(**settings.kafka.client_options())
    for body in request_bodies(customers, count, seed=51):
        producer.send(settings.kafka.requests_topic, body)
    producer.flush()
    producer.close()


def assert_kafka_series(metrics: ServiceMetrics, settings: Settings, requests: int) -> None:
    registry = metrics.registry
    labels = {"endpoint": settings.endpoint.name, "transport": "kafka"}
    assert (registry.get_sample_value("lakeserve_batch_size_requests_sum", labels) or 0) == requests
    assert (registry.get_sample_value("lakeserve_inference_rows_logged_total", labels) or 0) == requests
    assert (registry.get_sample_value("lakeserve_inference_table_flush_delay_seconds_count", labels) or 0) >= 1
    ok = sum(
        registry.get_sample_value(
            "lakeserve_requests_total", {**labels, "served_entity": e, "status_code": "200"}
        ) or 0
        for e in ("champion", "challenger")
    )  # fmt: skip
    assert ok == requests
    assert _sample(metrics, "lakeserve_kafka_consumer_lag_messages") == 0  # everything produced was consumed


def test_kafka_loop_reports_batches_flushes_and_lag(stack: Settings, demo_assets: Any) -> None:
    settings = kafka_settings(stack, "http-kmetrics")
    customers = pd.read_parquet(demo_assets.data_dir / "customers.parquet")
    produce_requests(settings, customers, 20)

    metrics = ServiceMetrics(CollectorRegistry(), settings.endpoint.name)
    worker = build_worker(settings, metrics=metrics)
    stop = threading.Event()
    thread = threading.Thread(target=worker.loop.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_until(lambda: worker.loop.log.stats.rows_logged >= 20, 90, "the Kafka worker did not log 20 rows")
        lag = "lakeserve_kafka_consumer_lag_messages"
        wait_until(lambda: _sample(metrics, lag) is not None, 30, "no lag was reported")
    finally:
        stop.set()
        thread.join(timeout=60)
    assert_kafka_series(metrics, settings, 20)


def test_worker_processes_report_into_the_servers_metrics(stack: Settings, demo_assets: Any) -> None:
    """``lakeserve serve --workers N --http``: the workers run in their own processes, and their
    requests, lag and flushes still reach the one registry (and dashboard) the REST server shows."""
    settings = kafka_settings(stack, "http-wmetrics")
    customers = pd.read_parquet(demo_assets.data_dir / "customers.parquet")
    metrics = ServiceMetrics(CollectorRegistry(), settings.endpoint.name)
    supervisor = Supervisor(settings, 1, metrics=metrics)
    stopped = threading.Event()
    runner = threading.Thread(target=supervisor.run, args=(stopped,), daemon=True)
    supervisor.start()
    runner.start()
    try:
        supervisor.wait_ready()
        produce_requests(settings, customers, 20)
        rows = "lakeserve_inference_rows_logged_total"
        labels = {"endpoint": settings.endpoint.name, "transport": "kafka"}
        wait_until(lambda: (metrics.registry.get_sample_value(rows, labels) or 0) >= 20, 90, "20 rows not reported")
        wait_until(lambda: _sample(metrics, "lakeserve_kafka_consumer_lag_messages") == 0, 30, "no lag of 0 reported")
    finally:
        stopped.set()
        runner.join(timeout=90)
    assert not runner.is_alive()
    assert_kafka_series(metrics, settings, 20)
    dashboard = metrics.dashboard()
    assert sum(e["requests"] for e in dashboard["entities"]) == 20
    assert {e["served_entity"] for e in dashboard["entities"]} <= {"champion", "challenger"}


def _sample(metrics: ServiceMetrics, name: str) -> float | None:
    """Sum of a gauge over its series; None when no series exists yet."""
    values = [s.value for family in metrics.registry.collect() for s in family.samples if s.name == name]
    return sum(values) if values else None
