"""Spark runs locally with Delta enabled through delta-spark; tables keep their history."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
from deltalake import DeltaTable, write_deltalake

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def test_delta_table_written_and_read_back_with_history(spark: SparkSession, tmp_path: Path) -> None:
    from delta.tables import DeltaTable as SparkDeltaTable

    path = str(tmp_path / "events")
    spark.range(0, 10).withColumnRenamed("id", "n").write.format("delta").save(path)
    spark.range(10, 15).withColumnRenamed("id", "n").write.format("delta").mode("append").save(path)
    spark.sql(f"DELETE FROM delta.`{path}` WHERE n < 3")

    now = spark.read.format("delta").load(path)
    assert sorted(r.n for r in now.collect()) == list(range(3, 15))
    history = SparkDeltaTable.forPath(spark, path).history().orderBy("version").collect()
    assert [h.operation for h in history] == ["WRITE", "WRITE", "DELETE"]
    first = spark.read.format("delta").option("versionAsOf", 0).load(path)
    assert first.count() == 10


def test_table_written_by_delta_rs_reads_in_spark(spark: SparkSession, tmp_path: Path) -> None:
    """The service writes with delta-rs (no JVM); Spark jobs read the same table."""
    path = str(tmp_path / "from_rust")
    frame = pd.DataFrame({"k": [1, 2, 3], "ts": pd.to_datetime(["2026-01-01T00:00:00Z"] * 3)})
    write_deltalake(path, frame)
    write_deltalake(path, frame.assign(k=frame.k + 3), mode="append")
    assert DeltaTable(path).version() == 1
    rows = spark.read.format("delta").load(path).orderBy("k").collect()
    assert [r.k for r in rows] == [1, 2, 3, 4, 5, 6]
    assert str(spark.conf.get("spark.sql.session.timeZone")) == "UTC"
