"""The main job, end to end, on the embedded defaults (``lakeserve demo``).

1. bring the stack up; demo data, Feast features (online and as a Delta feature table), models;
2. batch-score the historical transactions (the monitor's baseline);
3. start the service with two workers and send a few thousand requests through Kafka, a share
   of them bad and the good ones with drift planted in ``amount``; read every answer back;
4. stop the service (it flushes the inference table), run the monitor and A/B jobs;
5. execute the notebooks against the tables; print where everything is.

Every step is idempotent: a second run adds its traffic and recomputes the jobs, nothing to clean.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from lakeserve.jobs import demo_data
from lakeserve.jobs.ab_analysis import endpoint_routing_key, output_locations, run_ab
from lakeserve.jobs.batch_score import run_batch_score
from lakeserve.jobs.demo import DemoReport, prepare_assets
from lakeserve.jobs.demo_traffic import Traffic, TrafficReport
from lakeserve.jobs.monitor import run_monitor
from lakeserve.jobs.monitor_steps import MonitorTables
from lakeserve.jobs.notebooks import execute_notebooks
from lakeserve.jobs.settings import JobSettings
from lakeserve.jobs.spark import spark_session
from lakeserve.monitoring.report_files import ReportFiles
from lakeserve.pipelines.embedded.stack import Stack
from lakeserve.pipelines.supervisor import Supervisor
from lakeserve.redact import redact_uri

log = logging.getLogger(__name__)

GOOD_REQUESTS = 2850
BAD_REQUESTS = 150
DRIFT_SCALE = 2.5  # stream amounts against the training data's


class Progress(Protocol):
    """Who is told how the job goes: a step starts, advances, ends with a one-line summary."""

    def step_started(self, name: str) -> None: ...
    def progress(self, done: int, total: int) -> None: ...
    def step_done(self, summary: str = "") -> None: ...


class _Silent:
    def step_started(self, name: str) -> None:
        log.info("main job: %s ...", name)

    def progress(self, done: int, total: int) -> None: ...

    def step_done(self, summary: str = "") -> None:
        log.info("main job: done %s", summary)


@dataclass
class MainReport:
    assets: DemoReport = field(default_factory=DemoReport)
    batch: Any = None
    traffic: TrafficReport = field(default_factory=TrafficReport)
    table_rows: int = 0
    monitor: Any = None
    ab: Any = None
    notebooks: list[Path] = field(default_factory=list)
    locations: dict[str, str] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)


def run_main_job(
    settings: JobSettings, *, keep_up: bool = False, workers: int = 2, progress: Progress | None = None
) -> MainReport:
    report = MainReport()
    stack = Stack(settings)
    say = progress or _Silent()
    with _step(report, say, "stack up") as done:
        report.assets.started = stack.up()
        done(f"kafka on {settings.kafka.bootstrap_servers[0]}")
    try:
        with _step(report, say, "assets") as done:
            prepare_assets(settings, report.assets)
            done(", ".join(f"{m.alias} = card_fraud v{m.version}" for m in report.assets.models))
        settings = _with_baseline(settings)
        with _step(report, say, "batch scoring") as done:
            report.batch = _batch(settings)
            done(f"{report.batch.rows} rows")
        with _step(report, say, "streaming") as done:
            report.traffic = _stream(settings, workers, say.progress)
            done(f"{report.traffic.answered} of {report.traffic.sent} requests answered")
        report.table_rows = _count_rows(settings.inference_table_uri, settings.tables.delta_storage_options())
        with _step(report, say, "monitor") as done:
            report.monitor = _monitor(settings)
            done(f"{len(report.monitor.flags)} drift flags")
        with _step(report, say, "a/b") as done:
            report.ab = _ab(settings)
            done("; ".join(report.ab.verdicts.values()))
        with _step(report, say, "notebooks") as done:
            report.notebooks = _notebooks(settings)
            done(f"{len(report.notebooks)} executed")
        report.locations = _locations(settings, report)
    finally:
        if not keep_up:
            stack.down()
    return report


def _with_baseline(settings: JobSettings) -> JobSettings:
    """The monitor compares the stream with the batch scores of the training transactions."""
    if settings.monitor.baseline_table is not None:
        return settings
    monitor = settings.monitor.model_copy(update={"baseline_table": _batch_output(settings)})
    return settings.model_copy(update={"monitor": monitor})


def _batch_output(settings: JobSettings) -> str:
    return settings.table_uri(f"{settings.endpoint.auto_capture_config.table_name_prefix}_batch_scores")


def _batch(settings: JobSettings) -> Any:

    spark = spark_session(settings.spark, tables=settings.tables, ivy_dir=settings.stack.cache_dir / "ivy")
    source = str(settings.stack.state_dir / "demo" / "transactions.parquet")
    return run_batch_score(spark, settings, source, _batch_output(settings))


def _stream(settings: JobSettings, workers: int, progress: Callable[[int, int], None]) -> TrafficReport:
    import pandas as pd


    customers = pd.read_parquet(settings.stack.state_dir / "demo" / "customers.parquet")
    run_id = uuid.uuid4().hex[:8]
    bodies = demo_data.request_bodies(
        customers, GOOD_REQUESTS, seed=int(time.time()) % 1000, prefix=f"demo-{run_id}", amount_scale=DRIFT_SCALE
    )
    bodies += demo_data.bad_bodies(BAD_REQUESTS)
    order = np.random.default_rng(1).permutation(len(bodies))
    supervisor = Supervisor(settings, workers)
    stopped = threading.Event()
    runner = threading.Thread(target=supervisor.run, args=(stopped,), name="supervisor", daemon=True)
    traffic = Traffic(settings.kafka)
    supervisor.start()
    runner.start()
    try:
        supervisor.wait_ready()  # latency counts from a ready service, not from its start-up
        return traffic.run([bodies[i] for i in order], run_id, on_answer=progress)
    finally:
        traffic.close()
        stopped.set()
        runner.join(timeout=120)


def _count_rows(uri: str, storage_options: dict[str, str] | None) -> int:
    from deltalake import DeltaTable

    return int(DeltaTable(uri, storage_options=storage_options).count())


def _monitor(settings: JobSettings) -> Any:

    spark = spark_session(settings.spark, tables=settings.tables, ivy_dir=settings.stack.cache_dir / "ivy")
    tables = MonitorTables.beside(
        settings.inference_table_uri, settings.monitor, settings.tables.delta_storage_options()
    )
    return run_monitor(spark, settings.monitor, tables)


def _ab(settings: JobSettings) -> Any:

    spark = spark_session(settings.spark, tables=settings.tables, ivy_dir=settings.stack.cache_dir / "ivy")
    output, markdown = output_locations(settings)
    key = None if settings.ab.cluster_key else endpoint_routing_key(settings)
    reports = ReportFiles(settings.tables.delta_storage_options())
    return run_ab(
        spark, settings.ab, settings.inference_table_uri, output, markdown, routing_key=key, reports=reports
    )


def _notebooks(settings: JobSettings) -> list[Path]:

    return execute_notebooks(settings, settings.stack.state_dir / "notebooks")


def _locations(settings: JobSettings, report: MainReport) -> dict[str, str]:

    tables = MonitorTables.beside(
        settings.inference_table_uri, settings.monitor, settings.tables.delta_storage_options()
    )
    output, markdown = output_locations(settings)
    return {
        "inference table": settings.inference_table_uri,
        "batch scores (monitor baseline)": _batch_output(settings),
        "profile metrics": tables.profile,
        "drift metrics": tables.drift,
        "a/b results": output,
        "a/b summary": str(markdown),
        **{f"evidently report {i + 1}": r for i, r in enumerate(report.monitor.reports if report.monitor else [])},
        **{f"notebook {p.stem}": str(p) for p in report.notebooks},
        "mlflow": str(settings.mlflow.tracking_uri),
        "feast": str(settings.feast.repo_path),
    }


@contextmanager
def _step(report: MainReport, progress: Progress, name: str) -> Iterator[Callable[[str], None]]:
    """One step: told to ``progress`` as it starts and ends (with the summary it was given)."""
    progress.step_started(name)
    summary = [""]
    start = time.monotonic()
    try:
        yield lambda text: summary.__setitem__(0, text)
    finally:
        report.timings_s[name] = round(time.monotonic() - start, 1)
        progress.step_done(summary[0])


def format_main_report(report: MainReport) -> str:
    t = report.traffic
    errors = {k: v for k, v in sorted(t.by_status.items()) if k != "200"}
    lines = ["lakeserve: the main job, end to end", "=" * 36]
    lines.append(
        "models: "
        + ", ".join(f"{m.alias} = card_fraud v{m.version} ({m.feature_service})" for m in report.assets.models)
    )
    if report.batch is not None:
        lines.append(f"batch scoring: {report.batch.rows} rows, by entity {report.batch.by_entity}")
    lines.append(
        f"requests: {t.sent} sent, {t.answered} answered ({t.duplicates} duplicate answers), "
        f"{t.by_status.get('200', 0)} ok, errors {errors}, dead letters {t.dead_letters}"
    )
    lines.append(f"traffic split: {dict(t.by_entity)}")
    lines.append(
        f"latency (produce to answer, sent in one burst): p50 {t.percentile(50):.0f} ms, "
        f"p99 {t.percentile(99):.0f} ms; "
        f"{t.sent / t.seconds:.0f} requests/s"
        if t.seconds
        else "latency: n/a"
    )
    lines.append(f"inference table: {report.table_rows} rows in total")
    if report.monitor is not None:
        flagged = sorted({f"{f.column_name} ({f.drift_type})" for f in report.monitor.flags})
        lines.append(f"drift: {', '.join(flagged) if flagged else 'none flagged'}")
    if report.ab is not None:
        lines.append("a/b verdict: " + "; ".join(report.ab.verdicts.values()))
    lines.append("where things are:")
    lines += [f"  {k}: {redact_uri(v)}" for k, v in report.locations.items()]  # credentials masked
    lines.append("timings (s): " + ", ".join(f"{k} {v}" for k, v in report.timings_s.items()))
    return "\n".join(lines)
