"""Reading the batch input and writing the batch output, each in one place.

The input is a Delta table, read at one version (recorded in the report), or a parquet path.
The output is written with ONE Delta commit: ``mode("overwrite")`` replaces the whole table,
or only the rows matching ``replace_where``. Spark writes the data files first and commits the
log entry only when every task succeeded, so a run that fails at any point (a task error, a
killed driver) leaves the output table exactly as it was: same version, same rows. The files
of a failed attempt are unreferenced and removed by ``VACUUM``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from lakeserve.errors import ComponentError, ConfigError
from lakeserve.jobs.batch_features import delta_version
from lakeserve.jobs.settings import JobSettings

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)


def resolve_uri(settings: JobSettings, name: str) -> str:
    """A path or URI as given; a bare table name lives beside the inference table."""
    return name if "/" in name or ":" in name else settings.table_uri(name)


def read_input(spark: SparkSession, uri: str) -> tuple[DataFrame, int | None]:
    """The input rows and, for Delta, the version read (pinned for the whole run)."""
    from delta.tables import DeltaTable

    try:
        if DeltaTable.isDeltaTable(spark, uri):
            version = delta_version(spark, uri)
            return spark.read.format("delta").option("versionAsOf", version).load(uri), version
        return spark.read.parquet(uri), None
    except ComponentError:
        raise
    except Exception as exc:  # AnalysisException: path does not exist, not parquet
        raise ConfigError(f"cannot read the batch input {uri}: {exc}") from exc


def write_output(frame: DataFrame, uri: str, replace_where: str | None, overwrite_schema: bool) -> None:
    """One Delta commit replacing the table (or the ``replace_where`` rows); nothing on failure."""
    writer = frame.write.format("delta").mode("overwrite")
    if replace_where is not None:
        writer = writer.option("replaceWhere", replace_where)
    if overwrite_schema:
        writer = writer.option("overwriteSchema", "true")
    writer.save(uri)


@contextmanager
def progress(spark: SparkSession, what: str, every_s: float = 10.0) -> Iterator[None]:
    """Log the running Spark stages' task counts every ``every_s`` seconds (Spark's own bar is off)."""
    done = threading.Event()
    tracker = spark.sparkContext.statusTracker()

    def report() -> None:
        while not done.wait(every_s):
            stages = [tracker.getStageInfo(s) for s in tracker.getActiveStageIds()]
            parts = [f"stage {s.stageId}: {s.numCompletedTasks}/{s.numTasks} tasks" for s in stages if s]
            log.info("%s: %s", what, "; ".join(parts) or "waiting for tasks")

    thread = threading.Thread(target=report, name="batch-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=every_s)
