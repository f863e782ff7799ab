"""Batch scoring throughput: the batch job beside a plain ``mlflow.pyfunc.spark_udf``, same run.

    .venv/bin/python -m benchmarks.batch [--rows 200000] [--config FILE] [--state-dir DIR] [--master M]

(``-P``: do not put ``benchmarks/`` first on ``sys.path``, where ``http.py`` would shadow the
standard library's ``http``.)

Prepares the demo assets (models, Feast registry) in the state folder, generates ``--rows``
transactions over the demo's 2,000 customers, and writes three Delta tables: the customer
features, the transactions, and the transactions with their features already joined. Then it
times, each writing its output to Delta in one commit:

1. ``batch job (Feast PIT join)``: ``run_batch_score`` on the transactions, features joined
   point-in-time from the Spark offline store, routed 80/20 champion/challenger;
2. ``batch job (features in input)``: ``run_batch_score`` on the joined table
   (``features_from_input``): routing, checks and both models, no join;
3. ``plain spark_udf (champion)``: ``mlflow.pyfunc.spark_udf(env_manager="local")`` of the
   champion over the joined table: one model, no routing, no per-row checks.

and prints rows/s side by side.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lakeserve.features import demo_repo
from lakeserve.jobs import demo_data
from lakeserve.jobs.batch_score import BatchOptions, run_batch_score
from lakeserve.settings import Settings, load_settings


def main() -> None:
    args = _args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.basicConfig(level=logging.WARNING)
    settings = _settings(args)
    from lakeserve.jobs.demo import prepare_assets
    from lakeserve.jobs.spark import spark_session

    prepare_assets(settings)
    spark = spark_session(settings.spark, tables=settings.tables, ivy_dir=settings.stack.cache_dir / "ivy")
    folder = Path(settings.stack.state_dir) / "bench-batch"
    tables = _write_tables(folder, args.rows)
    _warm_up(spark, settings, tables)
    pit = BatchOptions(feature_tables={demo_repo.FEATURE_VIEW: tables["features"]}, overwrite_schema=True)
    given = BatchOptions(features_from_input=True, overwrite_schema=True)
    results = [
        _timed("batch job (Feast PIT join)", lambda: _job(spark, settings, tables, "input", pit)),
        _timed("batch job (features in input)", lambda: _job(spark, settings, tables, "joined", given)),
        _timed("plain spark_udf (champion)", lambda: _plain_udf(spark, settings, tables)),
    ]
    cores = spark.sparkContext.defaultParallelism
    spark.stop()
    _print(results, args.rows, settings.spark.master, cores)


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--config", help="settings YAML; default: the embedded defaults")
    p.add_argument("--state-dir", help="state folder for the demo assets; default: a temporary folder")
    p.add_argument("--master", default="local[*]", help="spark.master")
    return p.parse_args()


def _settings(args: argparse.Namespace) -> Settings:
    state = args.state_dir or tempfile.mkdtemp(prefix="lakeserve-bench-")
    overrides: dict[str, Any] = {"stack": {"state_dir": state}, "spark": {"master": args.master}}
    overrides["mlflow"] = {"ui_port": None}
    return load_settings(args.config, overrides=overrides)


def _write_tables(folder: Path, rows: int) -> dict[str, str]:
    """Customer features, transactions, and transactions with their features joined (Delta)."""
    from deltalake import write_deltalake

    data = demo_data.generate(n_transactions=rows)
    tables = {name: str(folder / name) for name in ("features", "input", "joined", "out_job", "out_udf")}
    write_deltalake(tables["features"], data.customers, mode="overwrite")
    write_deltalake(tables["input"], data.transactions, mode="overwrite")
    features = data.customers.drop(columns=["event_timestamp", "created"])
    joined = data.transactions.merge(features, on=demo_data.REQUEST_FIELDS[0], how="left")
    write_deltalake(tables["joined"], joined, mode="overwrite")
    return tables


def _warm_up(spark: Any, settings: Settings, tables: dict[str, str]) -> None:
    """One small run of each path, so JIT and first-load costs are not timed."""
    small = str(Path(tables["joined"]).parent / "warm")
    spark.read.format("delta").load(tables["joined"]).limit(2000).write.format("delta").mode("overwrite").save(small)
    options = BatchOptions(features_from_input=True, overwrite_schema=True)
    run_batch_score(spark, settings, small, tables["out_job"], options)


def _job(spark: Any, settings: Settings, tables: dict[str, str], source: str, options: BatchOptions) -> None:
    run_batch_score(spark, settings, tables[source], tables["out_job"], options)


def _plain_udf(spark: Any, settings: Settings, tables: dict[str, str]) -> None:
    import mlflow
    from pyspark.sql import functions as sf

    assert settings.mlflow.tracking_uri is not None
    mlflow.set_tracking_uri(settings.mlflow.tracking_uri)
    mlflow.set_registry_uri(settings.mlflow.registry_uri or settings.mlflow.tracking_uri)
    columns = [*demo_data.REQUEST_FIELDS[1:], *demo_repo.V1_FEATURES]
    udf = mlflow.pyfunc.spark_udf(
        spark, "models:/card_fraud@champion", result_type="prediction long, probability double", env_manager="local"
    )
    frame = spark.read.format("delta").load(tables["joined"])
    scored = frame.withColumn("scores", udf(sf.struct(*[sf.col(c) for c in columns])))
    scored.select("*", "scores.*").drop("scores").write.format("delta").mode("overwrite").option(
        "overwriteSchema", "true"
    ).save(tables["out_udf"])


def _timed(name: str, run: Callable[[], None]) -> tuple[str, float]:
    start = time.perf_counter()
    run()
    return name, time.perf_counter() - start


def _print(results: list[tuple[str, float]], rows: int, master: str, cores: int) -> None:
    print(f"\nBatch scoring, {rows:,} rows, spark.master={master} ({cores} cores), output written to Delta\n")
    print(f"| {'run':<32} | {'seconds':>8} | {'rows/s':>9} |")
    print(f"|{'-' * 34}|{'-' * 10}|{'-' * 11}|")
    for name, seconds in results:
        print(f"| {name:<32} | {seconds:>8.1f} | {rows / seconds:>9,.0f} |")


if __name__ == "__main__":
    main()
