"""REST invocations answer what MLflow's own scoring server answers, for every body kind."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd
import pytest
from http_helpers import Server, post
from mlflow.artifacts import download_artifacts
from mlflow.pyfunc import scoring_server
from mlflow.tracking import MlflowClient
from starlette.testclient import TestClient

from lakeserve.features import demo_repo
from lakeserve.jobs.demo_data import request_bodies
from lakeserve.scoring.routing import Router
from lakeserve.settings import Settings


@pytest.fixture(scope="module")
def mlflow_apps(
    stack: Settings, demo_assets: object, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, TestClient]]:
    """MLflow's scoring app (``mlflow models serve``'s FastAPI app) per served entity, same model version."""
    client = MlflowClient(tracking_uri=stack.mlflow.tracking_uri, registry_uri=stack.mlflow.registry_uri)
    apps = {}
    for alias in ("champion", "challenger"):
        version = client.get_model_version_by_alias("card_fraud", alias).version
        source = client.get_model_version_download_uri("card_fraud", version)
        path = download_artifacts(
            artifact_uri=source, dst_path=str(tmp_path_factory.mktemp(alias)), tracking_uri=stack.mlflow.tracking_uri
        )
        apps[alias] = TestClient(scoring_server.init(mlflow.pyfunc.load_model(path)))
    yield apps
    for app in apps.values():
        app.close()


def full_records(settings: Settings, data_dir: Path, entity: str, n: int) -> list[dict[str, Any]]:
    """Records carrying every input of both models (request fields and features) of customers routed to ``entity``."""
    customers = pd.read_parquet(data_dir / "customers.parquet").set_index("customer_id")
    router = Router(settings.endpoint.traffic_config)
    records = []
    for body in request_bodies(customers.reset_index(), 400, seed=21):
        record = json.loads(body)["dataframe_records"][0]
        if router.route(str(record["customer_id"])) != entity:
            continue
        features = customers.loc[record["customer_id"], demo_repo.V2_FEATURES].to_dict()
        records.append({**record, **{k: v.item() if hasattr(v, "item") else v for k, v in features.items()}})
        if len(records) == n:
            break
    return records


def bodies(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    frame = pd.DataFrame(records)
    columns = list(frame.columns)
    return {
        "dataframe_split": {"dataframe_split": {"columns": columns, "data": frame.values.tolist()}},
        "dataframe_records": {"dataframe_records": records},
        "instances": {"instances": records},
        "inputs": {"inputs": {c: frame[c].tolist() for c in columns}},
        "with_params": {"dataframe_records": records, "params": {}, "client_request_id": "parity-1"},
    }


@pytest.mark.parametrize("entity", ["champion", "challenger"])
def test_predictions_equal_mlflow_scoring_server(
    rest: Server, mlflow_apps: dict[str, TestClient], demo_assets: Any, entity: str
) -> None:
    records = full_records(rest.settings, demo_assets.data_dir, entity, 5)
    assert len(records) == 5
    for kind, body in bodies(records).items():
        ours = post(rest, body)
        theirs = mlflow_apps[entity].post("/invocations", json=body)
        assert theirs.status_code == 200, (kind, theirs.text)
        assert ours.status_code == 200, (kind, ours.text)
        assert ours.headers["served-model-name"] == entity, kind
        assert ours.json() == theirs.json(), kind


def test_looked_up_features_answer_with_only_the_key(rest: Server, demo_assets: Any) -> None:
    customers = pd.read_parquet(demo_assets.data_dir / "customers.parquet")
    body = json.loads(request_bodies(customers, 1, seed=5, records_per_request=3)[0])
    answer = post(rest, body)
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    assert len(predictions) == 3
    assert all(0.0 <= p["probability"] <= 1.0 and p["prediction"] in (0, 1) for p in predictions)
    assert set(answer.headers["served-model-name"].split(",")) <= {"champion", "challenger"}
    assert answer.headers["content-type"] == "application/json"


def test_health_and_ready(rest: Server) -> None:
    import httpx

    assert httpx.get(f"{rest.url}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{rest.url}/ready").json()
    assert ready["status"] == "ready"
    assert set(ready["served_entities"]) == {"champion", "challenger"}
