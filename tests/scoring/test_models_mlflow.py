"""MlflowServedModel against a real MLflow (SQLite tracking, local artifacts, registry alias)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lakeserve.errors import ComponentError, ConfigError
from lakeserve.features.lookup import FeatureTable, InMemoryFeatureLookup
from lakeserve.scoring.core import ScoringCore
from lakeserve.scoring.models import MlflowServedModel, conform
from lakeserve.scoring.records import Origin, ScoringRequest
from lakeserve.scoring.settings import EndpointSettings, MlflowSettings, Route, ServedEntity, TrafficConfig
from lakeserve.scoring.testing import ManualClock

MODEL = "card_fraud_test"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowSettings]:
    """One registry for the module (creating one costs seconds), with telemetry off."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        yield _register_model(tmp_path_factory.mktemp("mlflow"))


def _register_model(tmp_path: Path) -> MlflowSettings:
    """One sklearn model, logged with a signature and lakeserve metadata, registered as @champion."""
    import mlflow
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("scoring-test", artifact_location=(tmp_path / "artifacts").as_uri())
    rng = np.random.default_rng(0)
    x = pd.DataFrame({"amount": rng.uniform(0, 100, 200), "avg_amount": rng.uniform(10, 50, 200)})
    y = (x["amount"] > 2 * x["avg_amount"]).astype(int)
    estimator = LogisticRegression().fit(x, y)
    with mlflow.start_run(experiment_id=experiment):
        mlflow.sklearn.log_model(
            estimator,
            name="model",
            signature=infer_signature(x, estimator.predict(x)),
            registered_model_name=MODEL,
            metadata={"lakeserve": {"feature_service": "fs", "entity_keys": ["customer_id"]}},
        )
    client.set_registered_model_alias(MODEL, "champion", "1")
    mlflow.set_tracking_uri(None)  # the model must load through the settings, not a global
    mlflow.set_registry_uri(None)
    return MlflowSettings(tracking_uri=uri, registry_uri=uri)


def entity(**kw: str) -> ServedEntity:
    return ServedEntity(name="champion", entity_name=MODEL, **kw)  # type: ignore[arg-type]


def test_load_by_alias_reads_signature_and_metadata_and_predicts(
    registry: MlflowSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a stray default-URI access would create ./mlflow.db here
    model = MlflowServedModel.load(entity(alias="champion"), registry)
    assert (model.name, model.model_name, model.model_version) == ("champion", MODEL, "1")
    assert model.feature_service == "fs"
    assert list(model.entity_keys) == ["customer_id"]
    assert model.input_schema is not None
    assert [(f.name, str(f.type)) for f in model.input_schema] == [
        ("amount", "double"),
        ("avg_amount", "double"),
    ]
    out = model.predict(pd.DataFrame({"amount": [90.0, 1.0], "avg_amount": [10.0, 40.0]}))
    assert list(out.columns) == ["prediction"]
    assert out["prediction"].tolist() == [1, 0]
    model.unload()
    assert list(tmp_path.iterdir()) == []


def test_load_by_version_and_unknown_alias(registry: MlflowSettings) -> None:
    by_version = MlflowServedModel.load(entity(entity_version="1"), registry)
    assert by_version.model_version == "1"
    by_version.unload()
    with pytest.raises(ComponentError, match="was unloaded"):
        by_version.predict(pd.DataFrame({"amount": [1.0], "avg_amount": [1.0]}))
    with pytest.raises(ConfigError, match="alias 'nobody'"):
        MlflowServedModel.load(entity(alias="nobody"), registry)


def test_signature_check_is_per_record(registry: MlflowSettings) -> None:
    model = MlflowServedModel.load(entity(alias="champion"), registry)
    frame = pd.DataFrame({"amount": [1, "x", None], "avg_amount": [2.0, 3.0, 4.0]})
    checked = conform(frame, model.input_schema)
    assert [e is None for e in checked.errors] == [True, False, False]
    assert checked.frame["amount"].tolist() == [1.0]  # only the valid rows, cast
    missing = conform(pd.DataFrame({"amount": [1.0]}), model.input_schema)
    assert "missing input column 'avg_amount'" in str(missing.errors[0])
    model.unload()


def test_core_scores_with_the_mlflow_model_and_looked_up_features(registry: MlflowSettings) -> None:
    model = MlflowServedModel.load(entity(alias="champion"), registry)
    features = pd.DataFrame({"customer_id": [1, 2], "avg_amount": [10.0, 40.0]})
    lookup = InMemoryFeatureLookup({"fs": FeatureTable(["customer_id"], features)})
    endpoint = EndpointSettings(
        served_entities=[entity(alias="champion")],
        traffic_config=TrafficConfig(routes=[Route(served_model_name="champion", traffic_percentage=100)]),
    )
    clock = ManualClock()
    core = ScoringCore(endpoint, {"champion": model}, lookup, clock=clock.now)
    body = {"dataframe_split": {"columns": ["customer_id", "amount"], "data": [[1, 90.0], [2, 1.0], [2, "x"]]}}
    request = ScoringRequest("r1", json.dumps(body).encode(), clock.now(), Origin("kafka", "in", 0, 5))
    [result] = core.score([request])
    assert [r.status_code for r in result.records] == [200, 200, 400]
    assert [r.prediction for r in result.records[:2]] == [1, 0]
    assert result.records[0].features == {"avg_amount": 10.0}
    model.unload()
