"""The driver side of batch features: which Delta tables, and the point-in-time join.

Every input row gets, per feature of the served entities' feature services, the latest value
whose feature-row ``event_timestamp`` is at or before the row's event time (and within the
view's TTL): Feast's point-in-time join on the Spark offline store
(:mod:`lakeserve.features.offline`). A feature value written later than a row is never used.

As in the stream, a column the input already carries wins over the looked-up feature when it
is not null (``coalesce(input, feature)``). Nothing is collected to the driver: the result is
a lazy Spark DataFrame with one row per input row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from lakeserve.errors import ComponentError, ConfigError
from lakeserve.features.offline import (
    DeltaFeatureTable,
    ServiceFeatures,
    historical_features,
    spark_offline_store,
)
from lakeserve.jobs.settings import JobSettings

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

EVENT_TIMESTAMP = "event_timestamp"  # the entity-frame column Feast joins on
_ROW_ID = "__lakeserve_row"
_RENAMED = "__lakeserve_input__"
_RESERVED = {EVENT_TIMESTAMP, "entity_timestamp"}  # names Feast's join query uses itself


def resolve_feature_tables(
    spark: SparkSession, settings: JobSettings, views: Sequence[str], given: Mapping[str, str]
) -> dict[str, DeltaFeatureTable]:
    """The Delta table of each view (``given[view]``, else ``settings.table_uri(view)``), at its
    latest version, pinned for the whole run."""
    from delta.tables import DeltaTable

    tables = {}
    for view in views:
        uri = given.get(view) or settings.table_uri(view)
        if not DeltaTable.isDeltaTable(spark, uri):
            raise ConfigError(
                f"no Delta table of feature view {view!r} at {uri}; write the view's rows there "
                f"or pass --feature-table {view}=URI"
            )
        tables[view] = DeltaFeatureTable(view, uri, delta_version(spark, uri))
    return tables


def delta_version(spark: SparkSession, uri: str) -> int:
    """The latest committed version of the Delta table at ``uri``."""
    from delta.tables import DeltaTable

    try:
        return int(DeltaTable.forPath(spark, uri).history(1).collect()[0]["version"])
    except Exception as exc:  # py4j errors arrive as bare Exceptions
        raise ComponentError("delta", f"cannot read the history of {uri}: {exc}") from exc


def join_features(
    spark: SparkSession,
    settings: JobSettings,
    frame: DataFrame,
    services: Sequence[ServiceFeatures],
    tables: Mapping[str, DeltaFeatureTable],
    timestamp_column: str,
) -> DataFrame:
    """``frame`` with the services' features joined point-in-time on ``timestamp_column``."""
    from pyspark.sql import functions as sf

    for key in dict.fromkeys(k for s in services for k in s.join_keys):
        if key not in frame.columns:
            raise ConfigError(f"input has no column {key!r}, the entity key of the feature services")
    features = list(dict.fromkeys(f for s in services for f in s.features))
    if frame.isEmpty():
        return _with_null_features(spark, frame, features, tables)
    clash = [c for c in frame.columns if c in set(features) | _RESERVED]
    entity_df = frame.select(
        *[sf.col(c).alias(_RENAMED + c) if c in clash else sf.col(c) for c in frame.columns],
        sf.col(timestamp_column).cast("timestamp").alias(EVENT_TIMESTAMP),
        sf.monotonically_increasing_id().alias(_ROW_ID),
    )
    refs = list(dict.fromkeys(r for s in services for r in s.refs))
    with spark_offline_store(settings.feast, [s.name for s in services], tables) as store:
        joined = historical_features(spark, store, entity_df, refs)
    joined = joined.dropDuplicates([_ROW_ID])  # ties in a feature table must not duplicate rows
    columns = {c: sf.col(_RENAMED + c) if c in clash else sf.col(c) for c in frame.columns}
    for f in features:  # the input's non-null value wins, as a request field does in the stream
        columns[f] = sf.coalesce(columns[f], sf.col(f)) if f in columns else sf.col(f)
    return joined.select(*[column.alias(name) for name, column in columns.items()])


def _with_null_features(
    spark: SparkSession, frame: DataFrame, features: Sequence[str], tables: Mapping[str, DeltaFeatureTable]
) -> DataFrame:
    """An empty input gets the feature columns, typed as in the feature tables (Feast needs rows)."""
    from pyspark.sql import functions as sf

    types = {}
    for table in tables.values():
        schema = spark.read.format("delta").option("versionAsOf", table.version).load(table.uri).schema
        types.update({f.name: f.dataType for f in schema.fields})
    missing = [f for f in features if f not in frame.columns]
    return frame.select(*frame.columns, *[sf.lit(None).cast(types.get(f, "string")).alias(f) for f in missing])
