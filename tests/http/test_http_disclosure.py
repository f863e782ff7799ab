"""Least disclosure: ``/ready`` details only to an authenticated caller; error answers carry a
stable message and the request id, and a model's exception text stays in the server's log."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import mlflow
import pandas as pd
import pytest
from http_helpers import Server, http_settings_for, post, serving
from mlflow.models import infer_signature

from lakeserve.features import demo_repo
from lakeserve.pipelines.auth import token_digest
from lakeserve.scoring.settings import Route, ServedEntity, TrafficConfig
from lakeserve.scoring.testing_models import GuardedModel
from lakeserve.settings import Settings

TOKEN = "token-for-the-disclosure-tests"
GOOD = {"customer_id": 7, "amount": 12.5, "merchant_category": "grocery", "hour_of_day": 10, "is_online": 0}
FEATURES = {"customer_age": 30, "account_age_days": 100, "avg_amount_30d": 20.0, "txn_count_7d": 3,
            "chargeback_rate": 0.01}  # fmt: skip


@pytest.fixture(scope="module")
def guarded_model(stack: Settings, demo_assets: object) -> str:
    """A registered model that raises ``ValueError("amount must not be negative")`` on a negative amount."""
    mlflow.set_tracking_uri(stack.mlflow.tracking_uri)
    mlflow.set_registry_uri(stack.mlflow.registry_uri)
    example = pd.DataFrame([{**{k: v for k, v in GOOD.items() if k != "customer_id"}, **FEATURES}])
    model = GuardedModel()
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=model,
            signature=infer_signature(example, model.predict(None, example)),
            registered_model_name="guarded-http",
            metadata={"lakeserve": {"feature_service": demo_repo.SERVICE_V1, "entity_keys": ["customer_id"]}},
        )
    return str(info.registered_model_version)


@pytest.fixture(scope="module")
def guarded(stack: Settings, guarded_model: str) -> Iterator[Server]:
    http = {"access_control": True, "token_sha256": [token_digest(TOKEN)]}
    settings = http_settings_for(
        stack,
        "rest-disclosure",
        http=http,
        served_entities=[ServedEntity(name="guarded", entity_name="guarded-http", entity_version=guarded_model)],
        traffic_config=TrafficConfig(routes=[Route(served_model_name="guarded", traffic_percentage=100)]),
    )
    with serving(settings) as server:
        yield server


def body(**fields: Any) -> bytes:
    return json.dumps({"dataframe_records": [{**GOOD, **fields}]}).encode()


def test_ready_tells_details_only_to_an_authenticated_caller(guarded: Server) -> None:
    anonymous = httpx.get(f"{guarded.url}/ready")
    assert anonymous.status_code == 200
    assert anonymous.json() == {"status": "ready"}
    told = httpx.get(f"{guarded.url}/ready", headers={"authorization": f"Bearer {TOKEN}"}).json()
    assert told["status"] == "ready"
    assert told["endpoint"] == guarded.settings.endpoint.name
    assert set(told["served_entities"]) == {"guarded"}


def test_a_model_error_answers_a_stable_message_and_the_exception_only_reaches_the_log(
    guarded: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    auth = {"authorization": f"Bearer {TOKEN}"}
    answers = [post(guarded, body(amount=-5.0), auth), post(guarded, body(amount=-6.5), auth)]
    for answer in answers:
        assert answer.status_code == 500, answer.text
        assert answer.json() == {
            "error_code": "MODEL_ERROR",
            "message": "served entity 'guarded' failed on this record",  # the same for every exception
            "request_id": answer.headers["x-request-id"],
        }
        assert "negative" not in answer.text
        assert "ValueError" not in answer.text
    logged = [r.getMessage() for r in caplog.records]
    for answer in answers:
        rid = answer.headers["x-request-id"]
        assert any(rid in line and "ValueError: amount must not be negative" in line for line in logged), (rid, logged)
        assert any(rid in line and "MODEL_ERROR" in line for line in logged), (rid, logged)
    assert post(guarded, body(), auth).status_code == 200  # the server goes on


def test_every_refusal_carries_the_request_id(guarded: Server) -> None:
    for answer in (
        post(guarded, body()),  # 401
        post(guarded, b"{not json", {"authorization": f"Bearer {TOKEN}"}),  # 400
        httpx.post(f"{guarded.url}/serving-endpoints/nope/invocations", headers={"authorization": f"Bearer {TOKEN}"}),
    ):
        assert answer.status_code >= 400
        assert len(answer.headers["x-request-id"]) == 32
        assert answer.json()["request_id"] == answer.headers["x-request-id"]
