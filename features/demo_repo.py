"""The demo feature repository: customer statistics keyed by ``customer_id``.

Two feature services, one per model generation: the champion was trained on
``card_fraud_v1`` and the challenger on ``card_fraud_v2`` (one feature more). Each model is
logged with the name of its service, so serving looks up exactly what training used.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

ENTITY_KEY = "customer_id"
FEATURE_VIEW = "customer_stats"
SERVICE_V1 = "card_fraud_v1"
SERVICE_V2 = "card_fraud_v2"
V1_FEATURES = ["customer_age", "account_age_days", "avg_amount_30d", "txn_count_7d", "chargeback_rate"]
V2_FEATURES = [*V1_FEATURES, "home_country"]


def definitions(customers_parquet: Path) -> list[Any]:
    """Entity, feature view and services over the generated customer-features file."""
    from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
    from feast.types import Float64, Int64, String

    customer = Entity(name="customer", join_keys=[ENTITY_KEY], value_type=ValueType.INT64, description="a card holder")
    source = FileSource(
        name="customer_stats_source",
        path=str(customers_parquet),
        timestamp_field="event_timestamp",
        created_timestamp_column="created",
    )
    view = FeatureView(
        name=FEATURE_VIEW,
        entities=[customer],
        ttl=timedelta(days=400),
        schema=[
            Field(name="customer_age", dtype=Int64),
            Field(name="account_age_days", dtype=Int64),
            Field(name="avg_amount_30d", dtype=Float64),
            Field(name="txn_count_7d", dtype=Int64),
            Field(name="chargeback_rate", dtype=Float64),
            Field(name="home_country", dtype=String),
        ],
        source=source,
        online=True,
    )
    v1 = FeatureService(name=SERVICE_V1, features=[view[V1_FEATURES]])
    v2 = FeatureService(name=SERVICE_V2, features=[view[V2_FEATURES]])
    return [customer, view, v1, v2]
