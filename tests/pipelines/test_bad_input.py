"""Bad input is data: each kind is answered with its status, dead-lettered with the original
bytes and the reason, logged in the inference table, and the stream goes on."""

from __future__ import annotations

import json
from typing import Any

import mlflow
import pandas as pd
import pytest
from conftest_helpers import answers_for, produce, read_topic, running, settings_for, table_rows
from mlflow.models import infer_signature

from lakeserve.features import demo_repo
from lakeserve.scoring.settings import Limits, Route, ServedEntity, TrafficConfig
from lakeserve.scoring.testing_models import GuardedModel
from lakeserve.settings import Settings

GOOD = {"customer_id": 7, "amount": 12.5, "merchant_category": "grocery", "hour_of_day": 10, "is_online": 0}


@pytest.fixture(scope="module")
def guarded_version(stack: Settings, demo_assets: object) -> str:
    """A registered model that raises on a negative amount, reading the v1 feature service."""
    mlflow.set_tracking_uri(stack.mlflow.tracking_uri)
    mlflow.set_registry_uri(stack.mlflow.registry_uri)
    example = pd.DataFrame(
        [
            {
                **{k: v for k, v in GOOD.items() if k != "customer_id"},
                "customer_age": 30,
                "account_age_days": 100,
                "avg_amount_30d": 20.0,
                "txn_count_7d": 3,
                "chargeback_rate": 0.01,
            }
        ]
    )
    model = GuardedModel()
    signature = infer_signature(example, model.predict(None, example))
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=model,
            signature=signature,
            registered_model_name="guarded",
            metadata={"lakeserve": {"feature_service": demo_repo.SERVICE_V1, "entity_keys": ["customer_id"]}},
        )
    return str(info.registered_model_version)


def body(**fields: Any) -> bytes:
    return json.dumps({"dataframe_records": [{**GOOD, **fields}]}).encode()


CASES: list[tuple[str, bytes, int, str]] = [
    ("malformed-json", b'{"dataframe_records": [{"customer_id": 1,', 400, "BAD_REQUEST"),
    ("unknown-format", json.dumps({"rows": [GOOD]}).encode(), 400, "BAD_REQUEST"),
    (
        "missing-key",
        json.dumps({"dataframe_records": [{k: v for k, v in GOOD.items() if k != "customer_id"}]}).encode(),
        400,
        "INVALID_PARAMETER_VALUE",
    ),
    ("unknown-key", body(customer_id=987654), 404, "RESOURCE_DOES_NOT_EXIST"),
    ("signature-mismatch", body(hour_of_day="late"), 400, "INVALID_PARAMETER_VALUE"),
    (
        "non-finite",
        b'{"dataframe_records": [{"customer_id": 7, "amount": NaN, "merchant_category": "fuel",'
        b' "hour_of_day": 1, "is_online": 1}]}',
        400,
        "INVALID_PARAMETER_VALUE",
    ),
    ("over-size-cap", body(merchant_category="x" * 5000), 413, "MAX_REQUEST_SIZE_EXCEEDED"),
    ("model-raises", body(amount=-5.0), 500, "MODEL_ERROR"),
]


def test_every_bad_input_is_answered_dead_lettered_and_logged(stack: Settings, guarded_version: str) -> None:
    settings = settings_for(
        stack,
        "bad-input",
        served_entities=[ServedEntity(name="guarded", entity_name="guarded", entity_version=guarded_version)],
        traffic_config=TrafficConfig(routes=[Route(served_model_name="guarded", traffic_percentage=100)]),
        limits=Limits(max_request_bytes=4000, max_batch_size=64, max_batch_wait_ms=20),
    )
    capture = settings.endpoint.auto_capture_config.model_copy(update={"payload_cap_bytes": 1000})
    settings = settings.model_copy(
        update={"endpoint": settings.endpoint.model_copy(update={"auto_capture_config": capture})}
    )
    bodies = [case[1] for case in CASES]
    bodies += [body(customer_id=c) for c in range(1, 21)]  # good requests after the bad ones
    keys = [f"k{i}".encode() for i in range(len(bodies))]
    with running(settings) as worker:
        produce(settings, bodies, keys)
        answers = answers_for(settings, len(bodies))
        worker.loop.flush()

    by_key = {a.key: a for a in answers.values()}
    for i, (name, _raw, status, code) in enumerate(CASES):
        a = by_key[keys[i]]
        assert a.headers["status"] == str(status), (name, a.body)
        assert a.body["error_code"] == code, (name, a.body)
        assert a.body["message"], name
    for i in range(len(CASES), len(bodies)):
        assert by_key[keys[i]].headers["status"] == "200", by_key[keys[i]].body  # the stream went on

    letters = read_topic(settings, settings.kafka.dead_letter_topic, lambda s: len(s) >= len(CASES))
    assert len(letters) == len(CASES)
    by_letter_key = {d.key: d for d in letters}
    for i, (name, raw, status, code) in enumerate(CASES):
        d = by_letter_key[keys[i]]
        assert d.body["raw"] == raw, name  # the original bytes
        assert d.headers["error-code"] == code
        assert d.headers["status"] == str(status)
        assert d.headers["source-topic"] == settings.kafka.requests_topic
        assert d.headers["request-id"] == by_key[keys[i]].headers["request-id"]

    rows = table_rows(settings)
    assert len(rows) == len(bodies)  # one row per request here: every request had one record
    logged = rows.set_index("request_id")
    for i, (name, _raw, status, code) in enumerate(CASES):
        row = logged.loc[by_key[keys[i]].headers["request-id"]]
        assert row["status_code"] == status, name
        assert row["error_code"] == code, name
    # bodies over the 1000-byte logging cap are logged as null with the code; others verbatim
    oversize = logged.loc[by_key[keys[[c[0] for c in CASES].index("over-size-cap")]].headers["request-id"]]
    assert oversize["request"] is None
    assert list(oversize["logging_error_codes"]) == ["MAX_REQUEST_SIZE_EXCEEDED"]
    good = logged.loc[by_key[keys[-1]].headers["request-id"]]
    assert json.loads(good["request"]) == json.loads(bodies[-1])
    assert list(good["logging_error_codes"]) == []


def test_records_past_their_deadline_time_out(stack: Settings, demo_assets: object) -> None:
    settings = settings_for(stack, "timeouts", limits=Limits(timeout_s=0.000001))
    with running(settings) as worker:
        produce(settings, [body(customer_id=c) for c in range(1, 6)])
        answers = answers_for(settings, 5)
        worker.loop.flush()
    assert {a.headers["status"] for a in answers.values()} == {"504"}
    assert {a.body["error_code"] for a in answers.values()} == {"TIMEOUT"}
    rows = table_rows(settings)
    assert (rows["status_code"] == 504).all()
    assert len(rows) == 5
