"""FeastFeatureLookup against a real Feast store (SQLite online store) built in tmp_path."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest

from lakeserve.errors import ConfigError
from lakeserve.features.feast_lookup import FeastFeatureLookup

if TYPE_CHECKING:
    from feast import FeatureStore


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FeatureStore]:
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("FEAST_USAGE", "False")
        yield _build_store(tmp_path_factory.mktemp("feast"))


def _build_store(root: Path) -> FeatureStore:
    from feast import (
        Entity,
        FeatureService,
        FeatureStore,
        FeatureView,
        Field,
        FileSource,
        RepoConfig,
        ValueType,
    )
    from feast.infra.online_stores.sqlite import SqliteOnlineStoreConfig
    from feast.types import Float64, Int64, String

    now = datetime.now(UTC)
    rows = pd.DataFrame(
        {
            "customer_id": [1, 2, 3],
            "avg_amount": [10.0, 20.5, 30.0],
            "txn_count": [4, 5, 6],
            "country": ["DE", "FR", "IT"],
            "event_timestamp": [now - timedelta(minutes=1)] * 3,
        }
    )
    rows.to_parquet(root / "customers.parquet")
    config = RepoConfig(
        project="scoring_test",
        provider="local",
        registry=str(root / "registry.db"),
        online_store=SqliteOnlineStoreConfig(path=str(root / "online.db")),
        repo_path=root,
        entity_key_serialization_version=3,
    )
    fs = FeatureStore(config=config)
    customer = Entity(name="customer", join_keys=["customer_id"], value_type=ValueType.INT64)
    view = FeatureView(
        name="customer_stats",
        entities=[customer],
        ttl=timedelta(days=1),
        schema=[
            Field(name="avg_amount", dtype=Float64),
            Field(name="txn_count", dtype=Int64),
            Field(name="country", dtype=String),
            Field(name="customer_id", dtype=Int64),
        ],
        source=FileSource(path=str(root / "customers.parquet"), timestamp_field="event_timestamp"),
    )
    fs.apply([customer, view, FeatureService(name="fraud_v1", features=[view])])
    fs.write_to_online_store("customer_stats", rows)
    return fs


def test_known_and_unknown_keys_in_one_call(store: FeatureStore) -> None:
    lookup = FeastFeatureLookup(store)
    assert lookup.entity_keys("fraud_v1") == ["customer_id"]
    keys = pd.DataFrame({"customer_id": [2, 99, 1.0, None]})
    result = lookup.get("fraud_v1", keys)
    assert result.found.tolist() == [True, False, True, False]
    assert list(result.features.columns) == ["avg_amount", "txn_count", "country"]
    assert result.features["avg_amount"].iloc[[0, 2]].tolist() == [20.5, 10.0]
    assert result.features["country"].iloc[[0, 2]].tolist() == ["FR", "DE"]
    assert result.features.iloc[1].isna().all()
    assert lookup.feature_types("fraud_v1")["txn_count"] is not None
    found_only = lookup.get("fraud_v1", pd.DataFrame({"customer_id": [3, 1]}))
    assert found_only.features["txn_count"].dtype == np.int64
    assert found_only.features["txn_count"].tolist() == [6, 4]


def test_unknown_feature_service_is_a_config_error(store: FeatureStore) -> None:
    with pytest.raises(ConfigError, match="no_such_service"):
        FeastFeatureLookup(store).entity_keys("no_such_service")
