"""Registering the small test models of ``lakeserve.scoring.testing_models`` in the session's
MLflow registry, shared by the streaming, batch and REST tests."""

from __future__ import annotations

from typing import Any

import pandas as pd

from lakeserve.settings import Settings

GOOD = {"customer_id": 7, "amount": 12.5, "merchant_category": "grocery", "hour_of_day": 10, "is_online": 0}


def register_model(
    settings: Settings,
    python_model: Any,
    name: str,
    params: dict[str, Any] | None = None,
    model_config: dict[str, Any] | None = None,
    experiment_id: str | None = None,
) -> str:
    """Register ``python_model`` (a class of ``lakeserve.scoring.testing_models``) under ``name``,
    reading the v1 feature service, with ``params`` (name: default) in its signature and
    ``model_config`` as logged, in ``experiment_id`` (default: the active one); returns its version."""
    import mlflow
    from mlflow.models import infer_signature

    from lakeserve.features import demo_repo

    mlflow.set_tracking_uri(settings.mlflow.tracking_uri)
    mlflow.set_registry_uri(settings.mlflow.registry_uri)
    example = pd.DataFrame([{
        **{k: v for k, v in GOOD.items() if k != "customer_id"},
        "customer_age": 30, "account_age_days": 100, "avg_amount_30d": 20.0, "txn_count_7d": 3, "chargeback_rate": 0.01,
    }])  # fmt: skip
    signature = infer_signature(example, python_model.predict(None, example), params=params)
    with mlflow.start_run(experiment_id=experiment_id):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=python_model,
            signature=signature,
            registered_model_name=name,
            model_config=model_config,
            metadata={"lakeserve": {"feature_service": demo_repo.SERVICE_V1, "entity_keys": ["customer_id"]}},
        )
    return str(info.registered_model_version)
