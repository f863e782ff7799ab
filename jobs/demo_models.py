"""Train and register the demo's two fraud models in MLflow.

The training set is built by Feast's point-in-time join over each model's feature service, the
same service serving will look up; the service name is logged in the model's metadata
(``metadata["lakeserve"]["feature_service"]``). Version 1 (logistic regression on
``card_fraud_v1``) gets the alias ``champion``, version 2 (gradient boosting on ``card_fraud_v2``)
``challenger``. A re-run finds both aliases and trains nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd
from mlflow.pyfunc.model import PythonModel

from lakeserve.errors import ComponentError
from lakeserve.features import demo_repo
from lakeserve.jobs.demo_data import LABEL, REQUEST_FIELDS
from lakeserve.scoring.settings import MlflowSettings

if TYPE_CHECKING:
    from feast import FeatureStore
    from mlflow import MlflowClient

MODEL_NAME = "card_fraud"
NUMERIC_REQUEST = ["amount", "hour_of_day", "is_online"]
CATEGORICAL_REQUEST = ["merchant_category"]

class FraudClassifier(PythonModel):
    """A fitted sklearn pipeline answering ``prediction`` (0/1) and ``probability`` of fraud."""

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        proba = self.pipeline.predict_proba(model_input)[:, 1]
        return pd.DataFrame({"prediction": (proba >= 0.5).astype("int64"), "probability": proba})


@dataclass(frozen=True)
class RegisteredModel:
    alias: str
    version: str
    feature_service: str
    auc: float | None


@dataclass(frozen=True)
class _Spec:
    alias: str
    feature_service: str
    features: list[str]
    estimator: str


SPECS = [
    _Spec("champion", demo_repo.SERVICE_V1, demo_repo.V1_FEATURES, "logistic_regression"),
    _Spec("challenger", demo_repo.SERVICE_V2, demo_repo.V2_FEATURES, "gradient_boosting"),
]


def ensure_models(
    store: FeatureStore, transactions: pd.DataFrame, mlflow: MlflowSettings, *, retrain: bool = False
) -> list[RegisteredModel]:
    """Both aliases registered; trains only what is missing (or everything with ``retrain``)."""
    client = _client(mlflow)
    out = []
    for spec in SPECS:
        existing = None if retrain else _alias_version(client, spec.alias)
        if existing is not None:
            out.append(RegisteredModel(spec.alias, existing, spec.feature_service, None))
            continue
        out.append(_train_and_register(client, store, transactions, mlflow, spec))
    return out


def training_frame(store: FeatureStore, transactions: pd.DataFrame, feature_service: str) -> pd.DataFrame:
    """Point-in-time join of the transactions with the service's features (Feast offline store)."""
    entity_df = transactions[[*REQUEST_FIELDS, "event_timestamp", LABEL]]
    service = store.get_feature_service(feature_service)
    job = store.get_historical_features(entity_df=entity_df, features=service)
    return job.to_df().dropna().reset_index(drop=True)


def _train_and_register(
    client: MlflowClient, store: FeatureStore, transactions: pd.DataFrame, mlflow_settings: MlflowSettings, spec: _Spec
) -> RegisteredModel:
    import mlflow
    from mlflow.models import infer_signature
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import train_test_split

    frame = training_frame(store, transactions, spec.feature_service)
    columns = [*REQUEST_FIELDS[1:], *spec.features]
    x_train, x_test, y_train, y_test = train_test_split(
        frame[columns], frame[LABEL], test_size=0.25, random_state=3, stratify=frame[LABEL]
    )
    pipeline = _pipeline(spec, x_train).fit(x_train, y_train)
    auc = float(roc_auc_score(y_test, pipeline.predict_proba(x_test)[:, 1]))
    model = FraudClassifier(pipeline)
    signature = infer_signature(x_train, model.predict(None, x_train.head(5)))
    experiment = _experiment(client, mlflow_settings)
    with mlflow.start_run(experiment_id=experiment, run_name=f"{MODEL_NAME}-{spec.alias}"):
        mlflow.log_params({"estimator": spec.estimator, "feature_service": spec.feature_service})
        mlflow.log_metric("test_auc", auc)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=model,
            signature=signature,
            input_example=x_train.head(3),
            metadata={"lakeserve": {"feature_service": spec.feature_service, "entity_keys": [demo_repo.ENTITY_KEY]}},
            registered_model_name=MODEL_NAME,
        )
    version = str(info.registered_model_version)
    client.set_registered_model_alias(MODEL_NAME, spec.alias, version)
    return RegisteredModel(spec.alias, version, spec.feature_service, auc)


def _pipeline(spec: _Spec, sample: pd.DataFrame) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    categorical = [c for c in sample.columns if sample[c].dtype == object]
    numeric = [c for c in sample.columns if c not in categorical]
    prep = ColumnTransformer(
        [("num", StandardScaler(), numeric), ("cat", OneHotEncoder(handle_unknown="ignore"), categorical)]
    )
    if spec.estimator == "logistic_regression":
        return Pipeline([("prep", prep), ("clf", LogisticRegression(max_iter=500))])
    return Pipeline([("prep", prep), ("clf", HistGradientBoostingClassifier(max_iter=150, random_state=3))])


def _client(settings: MlflowSettings) -> MlflowClient:
    import mlflow
    from mlflow import MlflowClient

    assert settings.tracking_uri, "resolved by Settings"
    assert settings.registry_uri, "resolved by Settings"
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.registry_uri)
    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.registry_uri)


def _experiment(client: MlflowClient, settings: MlflowSettings) -> str:
    found = client.get_experiment_by_name(settings.experiment)
    if found is not None:
        return str(found.experiment_id)
    return str(client.create_experiment(settings.experiment, artifact_location=settings.artifact_root))


def _alias_version(client: MlflowClient, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(MODEL_NAME, alias).version)
    except MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(exc.error_code) or "not found" in str(exc).lower():
            return None
        raise ComponentError("mlflow", f"cannot read alias {alias!r} of {MODEL_NAME}: {exc}") from exc
