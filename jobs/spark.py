"""The Spark session factory: Delta enabled through delta-spark, ``spark.master`` from settings.

``local[*]`` by default; the same jobs run on a cluster by setting ``spark.master`` (or by
``spark-submit``, which wins because it sets the master before this code runs).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from lakeserve.errors import ComponentError
from lakeserve.jobs.settings import SparkSettings
from lakeserve.jobs.spark_storage import EXCLUDED_PACKAGES, connector_packages, hadoop_settings, storage_schemes
from lakeserve.monitoring.settings import TablesSettings
from lakeserve.monitoring.table_storage import Scheme

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def spark_session(
    settings: SparkSettings,
    *,
    tables: TablesSettings | None = None,
    ivy_dir: Path | None = None,
    connectors: frozenset[Scheme] = frozenset(),
) -> SparkSession:
    """Get or create the session; Delta jars come from Maven Central through Ivy on first use.

    With ``tables`` on an object store, its connector jars come the same way and its
    ``storage_options`` become the connector's settings for that bucket (:mod:`.spark_storage`);
    ``connectors`` adds the jars of more schemes to a new session (a test session that will
    meet an object store later). The settings apply to a session that already runs, too: they
    are session settings, read when a table is first opened.
    """
    from delta import configure_spark_with_delta_pip
    from pyspark.sql import SparkSession

    # Workers must run this interpreter (it has pyarrow, mlflow, lakeserve), and a local
    # session binds to loopback.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    if settings.master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = (
        SparkSession.builder.master(settings.master)
        .appName(settings.app_name)
        .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
        .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
        .config("spark.driver.memory", settings.driver_memory)
        .config("spark.sql.shuffle.partitions", str(settings.shuffle_partitions))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
    )
    if ivy_dir is not None:
        builder = builder.config("spark.jars.ivy", str(ivy_dir))
    packages = connector_packages(set(connectors) | (storage_schemes(tables) if tables else set()))
    if packages:
        builder = builder.config("spark.jars.excludes", ",".join(EXCLUDED_PACKAGES))
    for key, value in settings.conf.items():
        builder = builder.config(key, value)
    try:
        session = configure_spark_with_delta_pip(builder, extra_packages=packages).getOrCreate()
    except Exception as exc:  # py4j and JVM start-up errors arrive as bare Exceptions
        raise ComponentError("spark", f"could not start a session on {settings.master}: {exc}") from exc
    session.sparkContext.setLogLevel("WARN")
    for key, value in (hadoop_settings(tables) if tables else {}).items():
        session.conf.set(key, value)
    return session
