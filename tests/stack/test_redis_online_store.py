"""Redis as the production online store: the same definitions, materialized into a real
redis-server started by lakeserve, answer the same values as the source."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pytest
from netutil import free_ports

from lakeserve.features import demo_repo
from lakeserve.features.settings import FeastSettings
from lakeserve.features.store import apply_definitions, feature_store
from lakeserve.pipelines.embedded.services import RedisServer

if TYPE_CHECKING:
    from lakeserve.jobs.demo import DemoReport

REDIS_PORT = free_ports(1)[0]


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(REDIS_PORT, tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    assert server.stop()


def test_redis_online_store_serves_materialized_features(
    redis_server: RedisServer, demo_assets: DemoReport, tmp_path: Path
) -> None:
    assert demo_assets.data_dir is not None
    settings = FeastSettings(
        project="lakeserve_redis",
        repo_path=tmp_path / "feast",
        online_store="redis",
        redis_connection_string=f"127.0.0.1:{REDIS_PORT}",
    )  # type: ignore[arg-type]
    store = feature_store(settings)
    apply_definitions(store, demo_repo.definitions(demo_assets.data_dir / "customers.parquet"))
    store.materialize_incremental(end_date=datetime.now(UTC))

    import redis

    assert redis.Redis(port=REDIS_PORT).dbsize() > 0  # the values really are in Redis
    customers = pd.read_parquet(demo_assets.data_dir / "customers.parquet").set_index("customer_id")
    keys = [1, 17, 999, 2000]
    online = (
        store.get_online_features(
            features=store.get_feature_service(demo_repo.SERVICE_V1), entity_rows=[{"customer_id": k} for k in keys]
        )
        .to_df()
        .set_index("customer_id")
    )
    pd.testing.assert_frame_equal(
        online.loc[keys, demo_repo.V1_FEATURES],
        customers.loc[keys, demo_repo.V1_FEATURES],
        check_dtype=False,
        check_names=False,
    )
    unknown = store.get_online_features(
        features=store.get_feature_service(demo_repo.SERVICE_V1), entity_rows=[{"customer_id": 424242}]
    ).to_dict()
    assert unknown["avg_amount_30d"] == [None]
