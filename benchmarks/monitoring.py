"""Monitor job throughput and memory beside Evidently's ``DataDriftPreset``, same rows, same run.

    .venv/bin/python -m benchmarks.monitoring [--rows 1000000] [--master local[*]] [--driver-memory 4g]
        [--partitions 8] [--config FILE] [--dir DIR]
    .venv/bin/python -m benchmarks.monitoring --rows 10000000 --driver-memory 8g   # the 10 M run
    .venv/bin/python -m benchmarks.monitoring --exact-too   # also exact drift: time and actual errors

1. writes a synthetic inference table (``monitoring/synthetic.py``, the real schema) of
   ``--rows`` rows in two hourly windows, one served entity, 20 feature columns: ``num_0`` ..
   ``num_14``, ``n_items`` and ``cat_0`` .. ``cat_3``. From the second window ``num_0``,
   ``num_1`` (1 sd) and ``cat_0`` (55 % on one category) drift, and ``num_14`` moves by
   0.15 sd, a change below the monitor's material thresholds but above Evidently's;
2. times Evidently 0.7 ``DataDriftPreset`` on pandas in a child process: the same table read
   with deltalake, the second window against the first (no HTML is rendered);
3. times the monitor job (``run_monitor``, full refresh, Evidently off) over the table after a
   warm-up run on a small one: profile of both windows, drift of the second against the first;
4. prints rows/s, peak resident memory (Spark: JVM and Python driver; Evidently: its process),
   the Spark jobs and stages the run launched (its job group, counted by the status tracker),
   and each column's verdict from both, and the largest error bounds of binned statistics.

Memory is the peak of the resident set sampled every 50 ms (``psutil``, else ``/proc``), less
the process's resident set when the step began (Evidently: once its imports were done).
"""

from __future__ import annotations

import argparse
import gc
import logging
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from lakeserve.jobs.monitor import MonitorTables, run_monitor
from lakeserve.jobs.settings import SparkSettings
from lakeserve.monitoring.evidently_report import column_verdicts
from lakeserve.monitoring.settings import MonitorSettings
from lakeserve.monitoring.synthetic import EntitySpec, SyntheticSpec, synthetic_inference
from lakeserve.settings import load_settings

NUMERIC = [*(f"num_{i}" for i in range(15)), "n_items"]
CATEGORICAL = [f"cat_{i}" for i in range(4)]
DRIFTED = ("num_0", "num_1", "cat_0")
NUDGED, NUDGE = "num_14", 0.15


def main() -> None:
    args = _args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("lakeserve.jobs.monitor").setLevel(logging.INFO)  # the job's steps, timed
    folder = Path(args.dir or tempfile.mkdtemp(prefix="bench-monitoring-"))
    from lakeserve.jobs.spark import spark_session

    settings = load_settings(args.config)  # for the jar cache (no network once resolved)
    spark_settings = SparkSettings(
        master=args.master, driver_memory=args.driver_memory, shuffle_partitions=args.partitions
    )
    spark = spark_session(spark_settings, ivy_dir=settings.stack.cache_dir / "ivy")
    began = time.monotonic()
    uri = _write_table(folder / "warmup", 20_000)
    _monitor(spark, uri, group="warm-up")  # JVM start, class loading and first compilations stay out of the timing
    print(f"warm-up: {time.monotonic() - began:.1f} s")
    began = time.monotonic()
    uri = _write_table(folder / "payload", args.rows)
    print(f"table of {args.rows:,} rows x {len(NUMERIC) + len(CATEGORICAL)} features: {time.monotonic() - began:.1f} s")

    # Evidently first, in a child process: its memory is its own (this process keeps what writing
    # the table took) and is returned when it exits, while a stopped Spark session keeps its JVM
    # and heap, and at 10 M rows both at once would not fit in this machine.
    ev, load_s, seconds, peak = _evidently_in_child(uri)
    print(f"Evidently DataDriftPreset: {seconds:.1f} s ({load_s:.1f} s reading Delta to pandas), "
          f"{args.rows / seconds:,.0f} rows/s, peak RSS +{_mib(peak)} MiB")
    gc.collect()
    jvm = _gateway_pid(spark)
    (monitor_rows, seconds, peaks) = _measured(lambda: _monitor(spark, uri, group="full"), [jvm, None])
    jobs, stages = spark_work(spark, "full")
    print(f"monitor job: {seconds:.1f} s, {args.rows / seconds:,.0f} rows/s, "
          f"peak RSS JVM +{_mib(peaks[0])} MiB, Python driver +{_mib(peaks[1])} MiB; "
          f"{jobs} Spark jobs, {stages} stages")
    if args.exact_too:
        (exact_rows, exact_s, peaks) = _measured(lambda: _monitor(spark, uri, exact=True, group="exact"), [jvm, None])
        print(f"monitor job, exact drift: {exact_s:.1f} s, {args.rows / exact_s:,.0f} rows/s, "
              f"peak RSS JVM +{_mib(peaks[0])} MiB ({exact_s / seconds:.1f}x the binned run)")
        _binned_errors(monitor_rows, exact_rows)
    spark.stop()
    _compare(monitor_rows, ev)


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000, help="rows of the table (10 M: --rows 10000000)")
    p.add_argument("--master", default="local[*]", help="spark.master")
    p.add_argument("--driver-memory", default="4g", help="spark.driver.memory (12g for 10 M rows)")
    p.add_argument("--partitions", type=int, default=8, help="spark.sql.shuffle.partitions")
    p.add_argument("--config", type=Path, default=None, help="settings YAML (else $LAKESERVE_CONFIG)")
    p.add_argument("--dir", default=None, help="folder for the tables (default: a new temporary folder)")
    p.add_argument("--exact-too", action="store_true", help="also time exact drift and compare (small runs)")
    return p.parse_args()


def _write_table(folder: Path, rows: int) -> str:
    from deltalake import write_deltalake

    spec = SyntheticSpec(
        rows=rows,
        windows=2,
        window=timedelta(hours=1),
        numeric=15,
        categorical=4,
        entities=[EntitySpec("champion", 1.0, error_rate=0.0)],
        drift_columns=DRIFTED,
        drift_from=1,
        seed=7,
    )
    table, _ = synthetic_inference(spec)
    second = np.arange(rows) * spec.windows // rows >= 1  # as synthetic.py cuts the windows
    nudged = table[NUDGED].to_numpy() + NUDGE * second
    table = table.set_column(table.schema.get_field_index(NUDGED), table.schema.field(NUDGED), pa.array(nudged))
    uri = str(folder)
    write_deltalake(uri, table, mode="overwrite", partition_by=["date"])
    return uri


def spark_work(spark: Any, group: str) -> tuple[int, int]:
    """Spark jobs and stages launched under the job group ``group`` (the status tracker's count)."""
    tracker = spark.sparkContext.statusTracker()
    jobs = tracker.getJobIdsForGroup(group)
    stages = sum(len(info.stageIds) for info in map(tracker.getJobInfo, jobs) if info is not None)
    return len(jobs), stages


def _monitor(spark: Any, uri: str, exact: bool = False, group: str = "monitor") -> list[dict[str, Any]]:
    """Per column: the monitor's verdict on the second window against the first; the run's Spark
    jobs carry the job group ``group`` (counted by :func:`spark_work`)."""
    from deltalake import DeltaTable

    spark.sparkContext.setJobGroup(group, f"monitor run {group}")

    cfg = MonitorSettings(
        granularities=["1 hour"],
        columns=[*NUMERIC, *CATEGORICAL],
        evidently=False,
        **({"drift_exact_max_rows": 10**12, "output_prefix": "exact"} if exact else {}),
    )
    tables = MonitorTables.beside(uri, cfg)
    run_monitor(spark, cfg, tables, full_refresh=True)
    drift = DeltaTable(tables.drift).to_pandas()
    drift = drift[(drift.drift_type == "consecutive") & drift.slice_key.isna()]
    return list(drift.to_dict("records"))


def _evidently_in_child(uri: str) -> tuple[dict[str, Any], float, float, int]:
    """Evidently in a spawned process: verdicts, seconds reading, seconds in all, and its peak
    RSS growth above what it held once pandas, deltalake and Evidently were imported."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_evidently_child, args=(uri, child), daemon=True)
    proc.start()
    if parent.recv() != "imported":
        raise RuntimeError("the Evidently process did not start")
    pid = proc.pid
    assert pid is not None

    def run() -> tuple[dict[str, Any], float]:
        parent.send("go")
        answer: tuple[dict[str, Any], float] = parent.recv()
        return answer

    (verdicts, load_s), seconds, peaks = _measured(run, [pid])
    proc.join()
    return verdicts, load_s, seconds, peaks[0]


def _evidently_child(uri: str, conn: Any) -> None:
    import deltalake  # noqa: F401  (imports stay out of the memory figure)
    import evidently  # noqa: F401
    import pandas  # noqa: F401

    conn.send("imported")
    conn.recv()
    conn.send(_evidently(uri))


def _evidently(uri: str) -> tuple[dict[str, Any], float]:
    from deltalake import DeltaTable
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    began = time.monotonic()
    df = DeltaTable(uri).to_pandas(columns=["timestamp", "status_code", *NUMERIC, *CATEGORICAL])
    df = df[df.status_code == 200]
    second = df.timestamp >= df.timestamp.min().floor("h") + timedelta(hours=1)
    load_s = time.monotonic() - began
    definition = DataDefinition(numerical_columns=NUMERIC, categorical_columns=CATEGORICAL)
    cols = [*NUMERIC, *CATEGORICAL]
    snapshot = Report([DataDriftPreset(columns=cols)], include_tests=True).run(
        current_data=Dataset.from_pandas(df.loc[second, cols], data_definition=definition),
        reference_data=Dataset.from_pandas(df.loc[~second, cols], data_definition=definition),
    )
    return column_verdicts(snapshot.dict()), load_s


def _compare(monitor_rows: list[dict[str, Any]], evidently: dict[str, Any]) -> None:
    print(f"\n{'column':<9} {'monitor statistic':<24} {'monitor':<8} {'Evidently (method, score)':<36} "
          f"{'Evidently':<9} agree")
    agree = 0
    bounds: list[tuple[float, float]] = []
    for r in sorted(monitor_rows, key=lambda r: _order(r["column_name"])):
        name = r["column_name"]
        stat = (f"W/sd {r['wasserstein_normed']:.3f}" if r["column_type"] == "numeric"
                else f"JS {r['js_distance']:.3f}") + f" PSI {r['population_stability_index']:.3f}"
        if r["statistics_method"] == "binned":
            bounds.append((r["ks_error_bound"], r["wasserstein_error_bound"] / r["wasserstein_distance"]
                           * r["wasserstein_normed"] if r["wasserstein_distance"] else 0.0))
        ev = evidently[name]
        same = ev.drift_detected == r["drift_detected"]
        agree += same
        print(f"{name:<9} {stat:<24} {_word(r['drift_detected']):<8} {ev.method + f', {ev.score:.3f}':<36} "
              f"{_word(ev.drift_detected):<9} {'yes' if same else 'NO'}")
    print(f"verdicts agree on {agree} of {len(monitor_rows)} columns")
    if bounds:
        ks, w = (max(b) for b in zip(*bounds, strict=True))
        print(f"numeric statistics binned ({len(bounds)} columns): KS within {ks:.5f} of exact, "
              f"W/sd within {w:.5f} (largest bounds)")


def _binned_errors(binned: list[dict[str, Any]], exact: list[dict[str, Any]]) -> None:
    """The binned statistics' actual errors (against the exact run) beside their stored bounds."""
    by_name = {r["column_name"]: r for r in exact}
    worst = {"ks": 0.0, "ks bound": 0.0, "W/sd": 0.0, "W/sd bound": 0.0, "PSI": 0.0}
    within = True
    for r in binned:
        if r["column_type"] != "numeric":
            continue
        e = by_name[r["column_name"]]
        ks_err = abs(r["ks_statistic"] - e["ks_statistic"])
        w_err = abs(r["wasserstein_distance"] - e["wasserstein_distance"])
        within &= ks_err <= r["ks_error_bound"] + 1e-12 and w_err <= r["wasserstein_error_bound"] + 1e-12
        sd = r["wasserstein_distance"] / r["wasserstein_normed"] if r["wasserstein_normed"] else 1.0
        for k, v in (("ks", ks_err), ("ks bound", r["ks_error_bound"]), ("W/sd", w_err / sd),
                     ("W/sd bound", r["wasserstein_error_bound"] / sd),
                     ("PSI", abs(r["population_stability_index"] - e["population_stability_index"]))):
            worst[k] = max(worst[k], v)
    print("binned against exact, largest over the numeric columns: "
          + ", ".join(f"{k} {v:.5f}" for k, v in worst.items())
          + f"; every error within its bound: {'yes' if within else 'NO'}")


def _order(name: str) -> tuple[int, str]:
    return ((NUMERIC + CATEGORICAL).index(name), name)


def _word(flag: bool) -> str:
    return "drift" if flag else "-"


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f}"


def _gateway_pid(spark: Any) -> int:
    return int(spark.sparkContext._gateway.proc.pid)


def _measured(step: Callable[[], Any], pids: list[int | None]) -> tuple[Any, float, list[int]]:
    """Run ``step``; its result, seconds, and the peak RSS growth of each process (None: this one)."""
    start = [_rss(p) for p in pids]
    peaks = list(start)
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            for i, p in enumerate(pids):
                peaks[i] = max(peaks[i], _rss(p))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    began = time.monotonic()
    try:
        result = step()
    finally:
        seconds = time.monotonic() - began
        done.set()
        sampler.join()
    return result, seconds, [peak - s for peak, s in zip(peaks, start, strict=True)]


def _rss(pid: int | None) -> int:
    """Resident bytes of ``pid`` (None: this process) and its descendants."""
    try:
        import psutil
    except ImportError:
        path = Path(f"/proc/{pid or 'self'}/status")
        kib = next(line.split()[1] for line in path.read_text().splitlines() if line.startswith("VmRSS:"))
        return int(kib) * 1024
    proc = psutil.Process(pid)
    procs = [proc, *proc.children(recursive=True)] if pid is not None else [proc]
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


if __name__ == "__main__":
    main()
