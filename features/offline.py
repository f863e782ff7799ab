"""Point-in-time features from Feast's Spark offline store over Delta tables.

The demo registry's views read a ``FileSource`` (parquet), and Feast's default ``file`` offline
store reads a Delta folder as plain parquet (stale rows after an overwrite). For batch work this
module opens a second, throw-away Feast store whose ``offline_store`` is ``spark`` and whose
views are the registered ones with their batch source swapped for a ``SparkSource`` over a Delta
table (``table_format=DeltaFormat()``, pinned to one table version). Entities, views and
services are copied from the configured registry, so batch joins exactly the features the
stream looks up online.

:func:`historical_features` runs ``get_historical_features`` with a Spark DataFrame as the
entity frame and returns a Spark DataFrame (nothing is collected to the driver). Feast switches
``spark.sql.parser.quotedRegexColumnNames`` on for the session; it is put back afterwards.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lakeserve.errors import ComponentError, ConfigError
from lakeserve.features.settings import FeastSettings
from lakeserve.features.store import feature_store

if TYPE_CHECKING:
    from feast import FeatureStore
    from pyspark.sql import DataFrame, SparkSession

_REGEX_NAMES = "spark.sql.parser.quotedRegexColumnNames"


@dataclass(frozen=True, slots=True)
class DeltaFeatureTable:
    """The Delta table holding a feature view's rows, read at one version."""

    view: str
    uri: str
    version: int


@dataclass(frozen=True, slots=True)
class ServiceFeatures:
    """A feature service as batch sees it: its views, join keys and feature names."""

    name: str
    views: tuple[str, ...]
    join_keys: tuple[str, ...]
    features: tuple[str, ...]
    refs: tuple[str, ...]  # "view:feature", as get_historical_features takes them


def describe_services(feast: FeastSettings, names: Sequence[str]) -> list[ServiceFeatures]:
    """Views, join keys and features of each service, read from the configured registry."""
    from feast.errors import FeastObjectNotFoundException

    store = feature_store(feast)
    out = []
    for name in names:
        try:
            out.append(_describe(store, name))
        except FeastObjectNotFoundException as exc:
            raise ConfigError(f"feature service {name!r}: {exc}") from exc
    return out


def _describe(store: FeatureStore, name: str) -> ServiceFeatures:
    service = store.get_feature_service(name)
    views, keys, features, refs = [], [], [], []
    for projection in service.feature_view_projections:
        view = store.get_feature_view(projection.name)
        views.append(view.name)
        keys += [k for k in view.join_keys if k not in keys]
        features += [f.name for f in projection.features]
        ref = str(projection.name_to_use())  # type: ignore[no-untyped-call]
        refs += [f"{ref}:{f.name}" for f in projection.features]
    return ServiceFeatures(name, tuple(views), tuple(keys), tuple(features), tuple(refs))


@contextmanager
def spark_offline_store(
    feast: FeastSettings, services: Sequence[str], tables: Mapping[str, DeltaFeatureTable]
) -> Iterator[FeatureStore]:
    """A temporary Feast store (Spark offline store) holding ``services`` over Delta ``tables``."""
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

    with tempfile.TemporaryDirectory(prefix="lakeserve-feast-spark-") as folder:
        root = Path(folder)
        config = RepoConfig(
            project=feast.project,
            provider="local",
            registry={"path": str(root / "registry.db"), "cache_ttl_seconds": 0},
            online_store={"type": "sqlite", "path": str(root / "online.db")},
            offline_store={"type": "spark"},
            entity_key_serialization_version=3,
            repo_path=root,
        )
        try:
            store = FeatureStore(config=config)
            with _quiet():
                store.apply(_definitions(feature_store(feast), services, tables))
        except ConfigError:
            raise
        except Exception as exc:  # feast raises many unrelated types
            raise ComponentError("feast", f"cannot build the Spark offline store: {exc}") from exc
        yield store


def _definitions(source: FeatureStore, services: Sequence[str], tables: Mapping[str, DeltaFeatureTable]) -> list[Any]:
    """Entities, views (batch source swapped for Delta) and services, copied from ``source``."""
    definitions: dict[tuple[str, str], Any] = {}
    for name in services:
        service = source.get_feature_service(name)
        definitions[("service", name)] = service
        for projection in service.feature_view_projections:
            view = source.get_feature_view(projection.name)
            if view.name not in tables:
                raise ConfigError(f"no Delta table given for feature view {view.name!r}")
            definitions[("view", view.name)] = _on_delta(view, tables[view.name])
            for entity in view.entities:
                definitions[("entity", entity)] = source.get_entity(entity)
    return list(definitions.values())


def _on_delta(view: Any, table: DeltaFeatureTable) -> Any:
    """A copy of ``view`` whose batch source is a SparkSource over ``table`` (same columns)."""
    from feast import FeatureView
    from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource
    from feast.table_format import DeltaFormat

    old = view.batch_source
    with _quiet():
        source = SparkSource(
            name=old.name,
            path=table.uri,
            table_format=DeltaFormat(properties={"versionAsOf": str(table.version)}),
            timestamp_field=old.timestamp_field,
            created_timestamp_column=old.created_timestamp_column,
            field_mapping=dict(old.field_mapping),
        )
    proto = view.to_proto()
    proto.spec.batch_source.CopyFrom(source.to_proto())
    return FeatureView.from_proto(proto)


def historical_features(
    spark: SparkSession, store: FeatureStore, entity_df: DataFrame, refs: Sequence[str]
) -> DataFrame:
    """``entity_df`` (join keys, ``event_timestamp``, other columns) with the ``refs`` features,
    each the latest value at or before the row's ``event_timestamp`` (within the view's TTL);
    null where none. A lazy Spark DataFrame: the join runs when it is written."""
    from feast.infra.offline_stores.contrib.spark_offline_store.spark import SparkRetrievalJob

    previous = spark.conf.get(_REGEX_NAMES, None)
    try:
        with _quiet():
            job = store.get_historical_features(entity_df=entity_df, features=list(refs))
            assert isinstance(job, SparkRetrievalJob), "the store's offline store is spark"
            return job.to_spark_df()
    except Exception as exc:
        raise ComponentError("feast", f"point-in-time join of {list(refs)} failed: {exc}") from exc
    finally:
        if previous is None:
            spark.conf.unset(_REGEX_NAMES)
        else:
            spark.conf.set(_REGEX_NAMES, previous)


@contextmanager
def _quiet() -> Iterator[None]:
    """Hide Feast's 'experimental feature' warnings for the Spark source and store."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"The spark .* experimental", category=RuntimeWarning)
        yield
