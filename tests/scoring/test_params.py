"""A request's ``params`` reach the model, checked against its MLflow params schema: the core with
``ThresholdModel`` (a ``threshold`` double, default 0.5) and a model without params, both loaded
from a real registry (SQLite tracking, local artifacts); and the batch job's ``--params``, checked
on the driver before any Spark work."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from lakeserve.errors import ConfigError
from lakeserve.features.lookup import InMemoryFeatureLookup
from lakeserve.jobs.batch_args import add_batch_arguments, options_from_args
from lakeserve.jobs.batch_plan import load_models
from lakeserve.scoring.core import ScoringCore
from lakeserve.scoring.models import MlflowServedModel, ServedModel
from lakeserve.scoring.records import Origin, RequestResult, ScoringRequest
from lakeserve.scoring.settings import EndpointSettings, MlflowSettings, Route, ServedEntity, TrafficConfig
from lakeserve.scoring.testing import FakeServedModel, ManualClock
from lakeserve.scoring.testing_models import THRESHOLD_PARAMS, GuardedModel, ThresholdModel

WITH_PARAMS, WITHOUT_PARAMS = "threshold_test", "no_params_test"
RECORD = {"amount": 20.0}  # probability 0.12: 0 at thresholds 0.5 and 0.99, 1 at 0.01


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowSettings]:
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        yield _register_models(tmp_path_factory.mktemp("mlflow"))


def _register_models(tmp_path: Path) -> MlflowSettings:
    """``ThresholdModel`` logged with its params in the signature, and ``GuardedModel`` without."""
    import mlflow
    from mlflow.models import infer_signature

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("params-test", artifact_location=(tmp_path / "artifacts").as_uri())
    example = pd.DataFrame({"amount": [20.0, 500.0]})
    for name, model, params in [
        (WITH_PARAMS, ThresholdModel(), THRESHOLD_PARAMS),
        (WITHOUT_PARAMS, GuardedModel(), None),
    ]:
        with mlflow.start_run(experiment_id=experiment):
            mlflow.pyfunc.log_model(
                name="model",
                python_model=model,
                signature=infer_signature(example, model.predict(None, example), params=params),
                registered_model_name=name,
            )
    mlflow.set_tracking_uri(None)  # the models must load through the settings, not a global
    mlflow.set_registry_uri(None)
    return MlflowSettings(tracking_uri=uri, registry_uri=uri)


@pytest.fixture(scope="module")
def threshold_model(registry: MlflowSettings) -> Iterator[MlflowServedModel]:
    model = MlflowServedModel.load(ServedEntity(name="scorer", entity_name=WITH_PARAMS, entity_version="1"), registry)
    yield model
    model.unload()


@pytest.fixture(scope="module")
def plain_model(registry: MlflowSettings) -> Iterator[MlflowServedModel]:
    model = MlflowServedModel.load(
        ServedEntity(name="scorer", entity_name=WITHOUT_PARAMS, entity_version="1"), registry
    )
    yield model
    model.unload()


def endpoint_for(model_name: str) -> EndpointSettings:
    return EndpointSettings(
        served_entities=[ServedEntity(name="scorer", entity_name=model_name, entity_version="1")],
        traffic_config=TrafficConfig(routes=[Route(served_model_name="scorer", traffic_percentage=100)]),
    )


def core_for(model: ServedModel) -> ScoringCore:
    endpoint = endpoint_for(model.model_name)
    return ScoringCore(endpoint, {"scorer": model}, InMemoryFeatureLookup({}), clock=ManualClock().now)


def request(i: int, params: Any = None, records: list[dict[str, Any]] | None = None) -> ScoringRequest:
    body: dict[str, Any] = {"dataframe_records": records or [RECORD]}
    if params is not None:
        body["params"] = params
    return ScoringRequest(f"r{i}", json.dumps(body).encode(), ManualClock().now(), Origin("kafka", "in", 0, i))


def answer(result: RequestResult) -> Any:
    return json.loads(result.response_body)


def test_a_param_changes_the_prediction_for_the_same_record(threshold_model: MlflowServedModel) -> None:
    core = core_for(threshold_model)
    [high] = core.score([request(0, {"threshold": 0.99})])
    [low] = core.score([request(1, {"threshold": 0.01})])
    [default] = core.score([request(2)])
    assert answer(high) == {"predictions": [{"prediction": 0, "probability": pytest.approx(0.124, abs=1e-3)}]}
    assert answer(low)["predictions"][0]["prediction"] == 1
    assert answer(default)["predictions"][0]["prediction"] == 0  # the schema's default, 0.5


def test_requests_with_different_params_in_one_batch_each_get_their_own(threshold_model: MlflowServedModel) -> None:
    core = core_for(threshold_model)
    records = [{"amount": 20.0}, {"amount": 500.0}]  # probabilities 0.12 and 0.81
    results = core.score([
        request(0, {"threshold": 0.99}, records),
        request(1, {"threshold": 0.01}, records),
        request(2, {}, records),
        request(3, {"threshold": None}, records),  # null: as if not sent
        request(4, {"threshold": 1}, records),  # an integer is a double
        request(5, {"threshold": 0.01}, records),
    ])  # fmt: skip
    assert [r.status_code for r in results] == [200] * 6
    assert [[p["prediction"] for p in answer(r)["predictions"]] for r in results] == [
        [0, 0], [1, 1], [0, 1], [0, 1], [0, 0], [1, 1],
    ]  # fmt: skip


def test_a_bad_param_is_a_400_for_its_request_only(threshold_model: MlflowServedModel) -> None:
    core = core_for(threshold_model)
    results = core.score([
        request(0, {"threshold": "high"}),
        request(1, {"threshold": 0.01}),
        request(2, {"threshold": 0.5, "temperature": 2}),
        request(3, {"threshold": [0.1, 0.2]}),
        request(4, {"threshold": True}),
        request(5),
    ])  # fmt: skip
    assert [r.status_code for r in results] == [400, 200, 400, 400, 400, 200]
    assert [answer(r)["predictions"][0]["prediction"] for r in (results[1], results[5])] == [1, 0]
    for bad in (results[0], results[2], results[3], results[4]):
        assert bad.error_code == "INVALID_PARAMETER_VALUE"
        assert [r.error_code for r in bad.records] == ["INVALID_PARAMETER_VALUE"]  # logged as such
    assert answer(results[0])["message"] == "param 'threshold' of served entity 'scorer' expects double, got str 'high'"
    assert answer(results[2])["message"] == (
        "served entity 'scorer' does not take param(s) ['temperature']: it takes ['threshold']"
    )
    assert "param 'threshold'" in answer(results[3])["message"]
    assert "got bool True" in answer(results[4])["message"]


def test_a_model_without_a_params_schema_refuses_any_param(plain_model: MlflowServedModel) -> None:
    core = core_for(plain_model)
    results = core.score([request(0, {"threshold": 0.01}), request(1, {}), request(2)])
    assert [r.status_code for r in results] == [400, 200, 200]
    assert answer(results[0]) == {
        "error_code": "INVALID_PARAMETER_VALUE",
        "message": "served entity 'scorer' does not take param(s) ['threshold']: it takes no params",
    }


def test_one_predict_call_per_distinct_params() -> None:
    model = FakeServedModel("scorer", lambda f: f["amount"] * 2, param_defaults={"k": 0})
    core = core_for(model)
    results = core.score([request(0, {"k": 1}), request(1, {"k": 2}), request(2, {"k": 1}), request(3)])
    assert [r.status_code for r in results] == [200] * 4
    assert model.seen_params == [{"k": 1}, {"k": 2}, {"k": 0}]
    assert [len(f) for f in model.seen] == [2, 1, 1]


def test_the_batch_job_checks_its_params_on_the_driver(registry: MlflowSettings) -> None:
    endpoint = endpoint_for(WITH_PARAMS)
    assert load_models(endpoint, registry, {"threshold": 0.9}).versions == {"scorer": f"{WITH_PARAMS}/1"}
    with pytest.raises(ConfigError, match=r"^--params: param 'threshold' of served entity 'scorer' expects double"):
        load_models(endpoint, registry, {"threshold": "x"})
    with pytest.raises(ConfigError, match=r"^--params: served entity 'scorer' does not take param\(s\) \['k'\]"):
        load_models(endpoint, registry, {"k": 1})


def test_the_batch_job_takes_params_as_a_json_object() -> None:
    parser = add_batch_arguments(argparse.ArgumentParser(exit_on_error=False))
    args = parser.parse_args(["--input", "i", "--output", "o", "--params", '{"threshold": 0.9}'])
    assert options_from_args(args).params == {"threshold": 0.9}
    assert options_from_args(parser.parse_args(["--input", "i", "--output", "o"])).params == {}
    for bad in ("[0.9]", "{threshold"):
        with pytest.raises(argparse.ArgumentError, match="--params"):
            parser.parse_args(["--input", "i", "--output", "o", "--params", bad])


def test_a_shadow_that_refuses_the_params_fails_only_its_copy() -> None:
    champion = FakeServedModel("scorer", lambda f: f["amount"], param_defaults={"k": 0})
    shadow = FakeServedModel("shadow", lambda f: f["amount"])
    endpoint = EndpointSettings(
        served_entities=[ServedEntity(name=n, entity_name="m", entity_version="1") for n in ("scorer", "shadow")],
        traffic_config=TrafficConfig(
            routes=[Route(served_model_name="scorer", traffic_percentage=100)], shadow_model_name="shadow"
        ),
    )
    core = ScoringCore(endpoint, {"scorer": champion, "shadow": shadow}, InMemoryFeatureLookup({}), ManualClock().now)
    [sent, plain] = core.score([request(0, {"k": 1}), request(1)])
    assert (sent.status_code, answer(sent)) == (200, {"predictions": [20.0]})
    assert [(r.served_entity, r.shadow, r.status_code) for r in sent.records] == [
        ("scorer", False, 200), ("shadow", True, 400),
    ]  # fmt: skip
    assert [r.status_code for r in plain.records] == [200, 200]
    assert champion.seen_params == [{"k": 1}, {"k": 0}]
