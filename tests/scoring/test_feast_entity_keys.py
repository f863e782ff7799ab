"""Entity keys of the wrong type against a real Feast store (SQLite online store in tmp_path).

Feast fails the whole ``get_online_features`` call for one key it cannot convert ("abc" for an
INT64 join key), which the core would report as a store outage. Such keys are answered 400 for
their record, and the store is never asked for them; the good records of the batch are scored.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
import pytest

from lakeserve.features.feast_lookup import FeastFeatureLookup
from lakeserve.scoring.core import ScoringCore
from lakeserve.scoring.records import Origin, ScoringRequest
from lakeserve.scoring.settings import EndpointSettings, Route, ServedEntity, TrafficConfig
from lakeserve.scoring.testing import FakeServedModel

if TYPE_CHECKING:
    from feast import FeatureStore

BAD_INT_KEYS: list[Any] = ["abc", 1.5, True, 2**63 + 1, [1], {"id": 1}, "9" * 5000]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FeatureStore]:
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("FEAST_USAGE", "False")
        yield _build_store(tmp_path_factory.mktemp("feast_keys"))


def _build_store(root: Path) -> FeatureStore:
    from feast import Entity, FeatureService, FeatureStore, FeatureView, Field, FileSource, RepoConfig, ValueType
    from feast.infra.online_stores.sqlite import SqliteOnlineStoreConfig
    from feast.types import Float64, Int64, String

    now = datetime.now(UTC)
    customers = pd.DataFrame({"customer_id": [1, 2], "avg_amount": [10.0, 20.0], "event_timestamp": [now] * 2})
    countries = pd.DataFrame({"country": ["DE", "FR"], "rate": [1.5, 2.5], "event_timestamp": [now] * 2})
    customers.to_parquet(root / "customers.parquet")
    countries.to_parquet(root / "countries.parquet")
    config = RepoConfig(
        project="entity_keys_test",
        provider="local",
        registry=str(root / "registry.db"),
        online_store=SqliteOnlineStoreConfig(path=str(root / "online.db")),
        repo_path=root,
        entity_key_serialization_version=3,
    )
    fs = FeatureStore(config=config)
    customer = Entity(name="customer", join_keys=["customer_id"], value_type=ValueType.INT64)
    country = Entity(name="country", join_keys=["country"], value_type=ValueType.STRING)
    by_customer = FeatureView(
        name="customer_stats", entities=[customer], ttl=timedelta(days=1),
        schema=[Field(name="avg_amount", dtype=Float64), Field(name="customer_id", dtype=Int64)],
        source=FileSource(path=str(root / "customers.parquet"), timestamp_field="event_timestamp"),
    )  # fmt: skip
    by_country = FeatureView(
        name="country_stats", entities=[country], ttl=timedelta(days=1),
        schema=[Field(name="rate", dtype=Float64), Field(name="country", dtype=String)],
        source=FileSource(path=str(root / "countries.parquet"), timestamp_field="event_timestamp"),
    )  # fmt: skip
    services = [
        FeatureService(name="fraud_v1", features=[by_customer]),
        FeatureService(name="geo_v1", features=[by_country]),
    ]
    fs.apply([customer, country, by_customer, by_country, *services])
    fs.write_to_online_store("customer_stats", customers)
    fs.write_to_online_store("country_stats", countries)
    return fs


class _Spy:
    """The store, recording the entity rows of every online lookup."""

    def __init__(self, store: FeatureStore) -> None:
        self._store = store
        self.asked: list[dict[str, list[Any]]] = []

    def get_online_features(self, features: Any, entity_rows: dict[str, list[Any]]) -> Any:
        self.asked.append(entity_rows)
        return self._store.get_online_features(features=features, entity_rows=entity_rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def test_the_store_itself_fails_the_whole_call_for_one_wrong_typed_key(store: FeatureStore) -> None:
    service = store.get_feature_service("fraud_v1")
    with pytest.raises(Exception):  # noqa: B017, PT011 - Feast raises several unrelated types here
        store.get_online_features(features=service, entity_rows={"customer_id": [1, "abc"]}).to_dict()


def test_wrong_typed_keys_are_not_found_and_never_reach_the_store(store: FeatureStore) -> None:
    spy = _Spy(store)
    lookup = FeastFeatureLookup(spy)  # type: ignore[arg-type]
    assert lookup.key_types("fraud_v1") == {"customer_id": pa.int64()}
    keys = pd.DataFrame({"customer_id": pd.Series([*BAD_INT_KEYS, 2, 1.0], dtype=object)})
    result = lookup.get("fraud_v1", keys)
    assert result.found.tolist() == [False] * len(BAD_INT_KEYS) + [True, True]
    assert result.features["avg_amount"].tolist()[-2:] == [20.0, 10.0]
    assert spy.asked == [{"customer_id": [2, 1]}]


def new_core(store: FeatureStore) -> ScoringCore:
    def model(name: str, service: str, key: str, fn: Any) -> FakeServedModel:
        return FakeServedModel(name=name, fn=fn, feature_service=service, entity_keys=[key])

    models = {
        "m": model("m", "fraud_v1", "customer_id", lambda f: f["amount"] / f["avg_amount"]),
        "g": model("g", "geo_v1", "country", lambda f: f["amount"] * f["rate"]),
    }
    endpoint = EndpointSettings(
        served_entities=[ServedEntity(name=n, entity_name=n, entity_version="1") for n in models],
        traffic_config=TrafficConfig(
            routes=[Route(served_model_name="m", traffic_percentage=100)], shadow_model_name="g"
        ),
    )
    return ScoringCore(endpoint, models, FeastFeatureLookup(store))


def _request(i: int, record: dict[str, Any]) -> ScoringRequest:
    body = json.dumps({"dataframe_records": [record]}).encode()
    return ScoringRequest(f"r{i}", body, datetime.now(UTC), Origin("kafka", "requests", 0, i, None))


def test_the_core_answers_each_wrong_typed_key_400_and_scores_the_rest(store: FeatureStore) -> None:
    core = new_core(store)
    records = [{"customer_id": key, "country": "DE", "amount": 1.0} for key in BAD_INT_KEYS]
    records.append({"customer_id": 2, "country": "DE", "amount": 10.0})
    results = core.score([_request(i, r) for i, r in enumerate(records)])
    for result in results[:-1]:
        assert (result.status_code, result.error_code) == (400, "INVALID_PARAMETER_VALUE"), result.message
        assert "entity key 'customer_id'" in (result.message or "")
    assert results[0].message == "entity key 'customer_id' expects an integer (int64), got str 'abc'"
    assert "out of range for int64" in (results[3].message or "")
    assert results[-1].status_code == 200
    assert json.loads(results[-1].response_body) == {"predictions": [0.5]}


def test_the_shadow_copy_with_a_wrong_typed_string_key_fails_alone(store: FeatureStore) -> None:
    core = new_core(store)
    results = core.score([_request(0, {"customer_id": 1, "country": 7, "amount": 2.0})])
    assert results[0].status_code == 200  # the answered copy; the shadow's key is its own error
    (shadow,) = [r for r in results[0].records if r.shadow]
    assert (shadow.status_code, shadow.message) == (400, "entity key 'country' expects a string (string), got int 7")
