"""Message sizes end to end through the real broker: ``limits.max_request_bytes`` holds on Kafka
(broker, topics, producer and consumer take a request that large), and ``limits.max_response_bytes``
caps the answers the scoring core gives."""

from __future__ import annotations

import json
import time

import pandas as pd
from conftest_helpers import answers_for, produce, read_topic, running, settings_for, table_rows

from lakeserve.scoring.settings import Limits
from lakeserve.settings import Settings


def _big_body(customers: pd.DataFrame, min_bytes: int, memo_chars: int = 500) -> bytes:
    """One ``dataframe_split`` request of at least ``min_bytes``, every row a known customer with a
    free-text ``memo`` of ``memo_chars`` characters (not a model input: the model skips it)."""
    ids = customers["customer_id"].astype(int).tolist()
    memo = ("card present, customer called ahead; " * (memo_chars // 37 + 1))[:memo_chars]
    row_bytes = len(json.dumps([ids[0], 12.25, "electronics", 23, 1, memo])) + 2
    count = min_bytes // row_bytes + 1
    rows = [[ids[i % len(ids)], 12.25 + i % 97, "electronics", i % 24, i % 2, memo] for i in range(count)]
    columns = ["customer_id", "amount", "merchant_category", "hour_of_day", "is_online", "memo"]
    body = json.dumps({"dataframe_split": {"columns": columns, "data": rows}, "client_request_id": "big"}).encode()
    assert len(body) >= min_bytes
    return body


def test_a_10_mb_request_is_scored_answered_and_logged(service_settings: Settings, demo_assets) -> None:
    customers = pd.read_parquet(demo_assets.data_dir / "customers.parquet")
    big = _big_body(customers, 10 * 1000 * 1000)
    rows_sent = len(json.loads(big)["dataframe_split"]["data"])
    with running(service_settings) as worker:
        started = time.monotonic()
        produce(service_settings, [big])
        answers = answers_for(service_settings, 1, timeout_s=240)
        round_trip_s = time.monotonic() - started
        worker.loop.flush()
    (answer,) = answers.values()
    assert answer.headers["status"] == "200", answer.body
    assert len(answer.body["predictions"]) == rows_sent
    rows = table_rows(service_settings)
    assert len(rows) == rows_sent
    assert set(rows["request_id"]) == {answer.headers["request-id"]}
    assert (rows["status_code"] == 200).all()
    print(f"{len(big) / 1e6:.1f} MB request, {rows_sent} rows: answered in {round_trip_s:.1f} s")


def test_an_answer_over_max_response_bytes_becomes_an_error_answer(stack: Settings, demo_assets) -> None:
    settings = settings_for(stack, "response-cap", limits=Limits(max_response_bytes=2000))
    record = {"customer_id": 7, "amount": 12.5, "merchant_category": "grocery", "hour_of_day": 10, "is_online": 0}
    small = json.dumps({"dataframe_records": [record], "client_request_id": "small"}).encode()
    large = json.dumps({"dataframe_records": [record] * 200, "client_request_id": "large"}).encode()
    with running(settings) as worker:
        produce(settings, [small, large])
        answers = answers_for(settings, 2)
        worker.loop.flush()
    by_client = {a.headers["client-request-id"]: a for a in answers.values()}
    assert by_client["small"].headers["status"] == "200"
    refused = by_client["large"]
    assert refused.headers["status"] == "500"
    assert refused.body["error_code"] == "MAX_RESPONSE_SIZE_EXCEEDED"
    assert "over the endpoint's limit of 2000 bytes (limits.max_response_bytes)" in refused.body["message"]
    letters = read_topic(settings, settings.kafka.dead_letter_topic, lambda d: len(d) >= 1)
    assert [d.body["raw"] for d in letters] == [large]  # dead-lettered with the original request
    rows = table_rows(settings)
    large_rows = rows[rows.request_id == refused.headers["request-id"]]
    assert len(large_rows) == 200
    assert set(large_rows.error_code) == {"MAX_RESPONSE_SIZE_EXCEEDED"}
    assert set(large_rows.status_code) == {500}
    assert large_rows["response"].notna().all()  # the predictions stay in the log
