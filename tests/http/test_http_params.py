"""``params`` over REST: a real server, the demo's Feast features and a registered ``ThresholdModel``
(a ``threshold`` double in its signature's params). A param changes the answer; an undeclared
or wrongly typed one is a 400 ``INVALID_PARAMETER_VALUE`` naming it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import mlflow
import pandas as pd
import pytest
from http_helpers import Server, http_settings_for, post, serving
from mlflow.models import infer_signature

from lakeserve.features import demo_repo
from lakeserve.scoring.settings import Route, ServedEntity, TrafficConfig
from lakeserve.scoring.testing_models import THRESHOLD_PARAMS, ThresholdModel
from lakeserve.settings import Settings

GOOD = {"customer_id": 7, "amount": 12.5, "merchant_category": "grocery", "hour_of_day": 10, "is_online": 0}
FEATURES = {"customer_age": 30, "account_age_days": 100, "avg_amount_30d": 20.0, "txn_count_7d": 3,
            "chargeback_rate": 0.01}  # fmt: skip


@pytest.fixture(scope="module")
def threshold_model(stack: Settings, demo_assets: object) -> str:
    """``ThresholdModel`` registered with ``threshold`` (double, default 0.5) in its signature."""
    mlflow.set_tracking_uri(stack.mlflow.tracking_uri)
    mlflow.set_registry_uri(stack.mlflow.registry_uri)
    example = pd.DataFrame([{**{k: v for k, v in GOOD.items() if k != "customer_id"}, **FEATURES}])
    model = ThresholdModel()
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=model,
            signature=infer_signature(example, model.predict(None, example), params=THRESHOLD_PARAMS),
            registered_model_name="threshold-http",
            metadata={"lakeserve": {"feature_service": demo_repo.SERVICE_V1, "entity_keys": ["customer_id"]}},
        )
    return str(info.registered_model_version)


@pytest.fixture(scope="module")
def server(stack: Settings, threshold_model: str) -> Iterator[Server]:
    entity = ServedEntity(name="thresholded", entity_name="threshold-http", entity_version=threshold_model)
    settings = http_settings_for(
        stack,
        "rest-params",
        served_entities=[entity],
        traffic_config=TrafficConfig(routes=[Route(served_model_name="thresholded", traffic_percentage=100)]),
    )
    with serving(settings) as served:
        yield served


def body(params: Any = None) -> dict[str, Any]:
    return {"dataframe_records": [GOOD], **({} if params is None else {"params": params})}


def test_a_param_changes_the_answer(server: Server) -> None:
    answers = [post(server, body(p)) for p in ({"threshold": 0.01}, {"threshold": 0.99}, None)]
    assert [a.status_code for a in answers] == [200, 200, 200], [a.text for a in answers]
    predictions = [a.json()["predictions"][0] for a in answers]
    assert [p["prediction"] for p in predictions] == [1, 0, 0]  # probability about 0.08; default 0.5
    assert predictions[0]["probability"] == predictions[1]["probability"]


def test_a_bad_param_is_a_400_naming_it(server: Server) -> None:
    wrong = post(server, body({"threshold": "low"}))
    assert wrong.status_code == 400, wrong.text
    assert wrong.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert wrong.json()["message"] == "param 'threshold' of served entity 'thresholded' expects double, got str 'low'"
    undeclared = post(server, body({"threshold": 0.2, "max_tokens": 5}))
    assert undeclared.status_code == 400, undeclared.text
    assert undeclared.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "['max_tokens']" in undeclared.json()["message"]
    assert post(server, body({})).status_code == 200  # an empty params object is always fine
