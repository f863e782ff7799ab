"""The demo's assets: data, Feast features (online and as a Delta table), registered models.

The main job (:mod:`lakeserve.jobs.end_to_end`) and the tests prepare them with
:func:`prepare_assets`. Every step is idempotent, so a second run reuses what the first left
(data files, registered models) and needs no cleaning by hand.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from lakeserve.features import demo_repo
from lakeserve.features.store import apply_definitions, feature_store
from lakeserve.jobs import demo_data, demo_models
from lakeserve.jobs.settings import JobSettings

log = logging.getLogger(__name__)


@dataclass
class DemoReport:
    started: list[str] = field(default_factory=list)
    data_dir: Path | None = None
    customers: int = 0
    transactions: int = 0
    fraud_rate: float = 0.0
    models: list[demo_models.RegisteredModel] = field(default_factory=list)
    online_check: dict[int, dict[str, object]] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)


def prepare_assets(settings: JobSettings, report: DemoReport | None = None) -> DemoReport:
    """Data, feature registration and materialization, models: what the service needs to run."""
    report = report or DemoReport()
    data_dir = settings.stack.state_dir / "demo"
    with _step(report, "data"):
        data = _data(data_dir)
    report.data_dir, report.customers, report.transactions = data_dir, len(data.customers), len(data.transactions)
    report.fraud_rate = float(data.transactions[demo_data.LABEL].mean())
    store = feature_store(settings.feast)
    with _step(report, "features"):
        apply_definitions(store, demo_repo.definitions(data_dir / "customers.parquet"))
        store.materialize_incremental(end_date=datetime.now(UTC))
        _feature_table(
            settings.table_uri(demo_repo.FEATURE_VIEW), data.customers, settings.tables.delta_storage_options()
        )
    with _step(report, "models"):
        report.models = demo_models.ensure_models(store, data.transactions, settings.mlflow)
    report.online_check = _online_check(store, [1, 2, 3])
    return report


def _data(folder: Path) -> demo_data.DemoData:
    """Generate once; later runs read the files back so features and models stay consistent."""
    customers, transactions = folder / "customers.parquet", folder / "transactions.parquet"
    if customers.exists() and transactions.exists():
        return demo_data.DemoData(pd.read_parquet(customers), pd.read_parquet(transactions))
    data = demo_data.generate()
    data.write(folder)
    return data


def _feature_table(uri: str, customers: pd.DataFrame, storage_options: dict[str, str] | None) -> None:
    """The view's rows as a Delta table too: batch scoring joins them point-in-time in Spark."""
    from deltalake import DeltaTable, write_deltalake

    if not DeltaTable.is_deltatable(uri, storage_options):
        write_deltalake(uri, customers, mode="overwrite", storage_options=storage_options)


def _online_check(store: object, keys: list[int]) -> dict[int, dict[str, object]]:
    from feast import FeatureStore

    assert isinstance(store, FeatureStore)
    rows = store.get_online_features(
        features=store.get_feature_service(demo_repo.SERVICE_V2),
        entity_rows=[{demo_repo.ENTITY_KEY: k} for k in keys],
    ).to_dict()
    return {k: {f: rows[f][i] for f in demo_repo.V2_FEATURES} for i, k in enumerate(keys)}


@contextmanager
def _step(report: DemoReport, name: str) -> Iterator[None]:
    log.info("demo: %s ...", name)
    start = time.monotonic()
    try:
        yield
    finally:
        report.timings_s[name] = round(time.monotonic() - start, 1)
