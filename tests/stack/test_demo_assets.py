"""Demo assets on the real MLflow and Feast: models load by alias and predict; online features
equal the source values; each model carries the feature service it was trained on."""

from __future__ import annotations

from typing import TYPE_CHECKING

import mlflow
import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from lakeserve.features import demo_repo
from lakeserve.features.store import feature_store
from lakeserve.jobs import demo_models
from lakeserve.jobs.demo_data import LABEL, REQUEST_FIELDS
from lakeserve.settings import Settings

if TYPE_CHECKING:
    from lakeserve.jobs.demo import DemoReport


def test_models_load_by_alias_and_predict(settings: Settings, demo_assets: DemoReport) -> None:
    assert demo_assets.data_dir is not None
    transactions = pd.read_parquet(demo_assets.data_dir / "transactions.parquet").head(3000)
    customers = pd.read_parquet(demo_assets.data_dir / "customers.parquet")
    joined = transactions.merge(customers.drop(columns=["event_timestamp", "created"]), on="customer_id")
    # other tests point MLflow's process-wide URIs elsewhere: set both for this session's store
    mlflow.set_tracking_uri(settings.mlflow.tracking_uri)
    mlflow.set_registry_uri(settings.mlflow.registry_uri)
    for alias, service, features in [
        ("champion", demo_repo.SERVICE_V1, demo_repo.V1_FEATURES),
        ("challenger", demo_repo.SERVICE_V2, demo_repo.V2_FEATURES),
    ]:
        model = mlflow.pyfunc.load_model(f"models:/{demo_models.MODEL_NAME}@{alias}")
        meta = model.metadata.metadata["lakeserve"]
        assert meta == {"feature_service": service, "entity_keys": ["customer_id"]}
        inputs = model.metadata.get_input_schema().input_names()
        assert sorted(inputs) == sorted([*REQUEST_FIELDS[1:], *features])
        out = model.predict(joined[inputs])
        assert list(out.columns) == ["prediction", "probability"]
        assert out["probability"].between(0, 1).all()
        assert roc_auc_score(joined[LABEL], out["probability"]) > 0.7  # it learned the planted rule


def test_aliases_point_to_distinct_versions(settings: Settings, demo_assets: DemoReport) -> None:
    client = mlflow.MlflowClient(tracking_uri=settings.mlflow.tracking_uri, registry_uri=settings.mlflow.registry_uri)
    champion = client.get_model_version_by_alias(demo_models.MODEL_NAME, "champion")
    challenger = client.get_model_version_by_alias(demo_models.MODEL_NAME, "challenger")
    assert champion.version != challenger.version
    assert {m.alias: m.version for m in demo_assets.models} == {
        "champion": str(champion.version),
        "challenger": str(challenger.version),
    }


def test_online_features_equal_source(settings: Settings, demo_assets: DemoReport) -> None:
    assert demo_assets.data_dir is not None
    customers = pd.read_parquet(demo_assets.data_dir / "customers.parquet").set_index("customer_id")
    keys = [int(k) for k in np.random.default_rng(5).choice(customers.index, 50, replace=False)]
    store = feature_store(settings.feast)
    online = (
        store.get_online_features(
            features=store.get_feature_service(demo_repo.SERVICE_V2),
            entity_rows=[{"customer_id": k} for k in keys],
        )
        .to_df()
        .set_index("customer_id")
    )
    expected = customers.loc[keys, demo_repo.V2_FEATURES]
    pd.testing.assert_frame_equal(
        online.loc[keys, demo_repo.V2_FEATURES], expected, check_dtype=False, check_names=False
    )


def test_assets_are_idempotent(settings: Settings, demo_assets: DemoReport) -> None:
    """A second run reuses data and registered models: no new versions, same features."""
    from lakeserve.jobs.demo import prepare_assets

    again = prepare_assets(settings)
    assert [(m.alias, m.version) for m in again.models] == [(m.alias, m.version) for m in demo_assets.models]
    assert all(m.auc is None for m in again.models)  # nothing retrained
    assert again.online_check == demo_assets.online_check
