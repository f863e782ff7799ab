"""The jobs as a scheduler runs them: ``python -m lakeserve ... jobs run JOB`` and ``jobs schedule``
as processes on the session's settings file, real Spark and Delta. What cron or Airflow sees is
checked: the exit code, and the result line that is the last line on stdout.

Each Spark process costs a JVM start, so the processes of a test run side by side."""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pytest
import yaml
from deltalake import DeltaTable
from processes import output_lines

from lakeserve.features import demo_repo
from lakeserve.jobs.demo_data import REQUEST_FIELDS
from lakeserve.jobs.outcome import RESULT_PREFIX, parse_result
from lakeserve.monitoring.synthetic import EntitySpec, SyntheticSpec, write_synthetic
from lakeserve.settings import Settings, load_settings

if TYPE_CHECKING:
    from lakeserve.jobs.demo import DemoReport

DEADLINE_S = 900  # a job on a busy 2-core machine: JVM start, Ivy, the Spark stages
DRIFTED = SyntheticSpec(  # num_1 and cat_1 drift from window 2; the challenger is worse on purpose
    rows=12_000,
    windows=4,
    entities=[EntitySpec("champion", 0.7), EntitySpec("challenger", 0.3, error_rate=0.05, latency_ms=26.0)],
    drift_columns=("num_1", "cat_1"),
    drift_from=2,
    seed=1,
)
UNDRIFTED = SyntheticSpec(rows=8_000, windows=4, entities=[EntitySpec("champion", 0.7), EntitySpec("challenger", 0.3)])
NULL_SPLIT = SyntheticSpec(  # test_ab_job's null split of seed 21: nothing is significant
    rows=6_000,
    windows=1,
    window=timedelta(hours=12),
    seed=21,
    entities=[EntitySpec("champion", 0.5), EntitySpec("challenger", 0.5)],
)
MONITOR = {"granularities": ["1 hour"], "evidently": False}


@dataclass
class Done:
    code: int
    out: str
    err: str

    @property
    def result(self) -> dict[str, Any]:
        last = self.out.rstrip("\n").splitlines()[-1] if self.out.strip() else ""
        assert last.startswith(RESULT_PREFIX), f"no result line last on stdout:\n{self.out}\n{self.err[-3000:]}"
        parsed = parse_result(last)
        assert parsed is not None
        return parsed


def _config(base: Path, folder: Path, **sections: Any) -> Path:
    """The session's settings file with the test's own table root and sections."""
    folder.mkdir(parents=True, exist_ok=True)
    data = yaml.safe_load(base.read_text()) | {"tables": {"root": str(folder / "tables")}} | sections
    path = folder / "lakeserve.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _with_table(config: Path, spec: SyntheticSpec) -> None:
    """The inference table the config names, and its labels in ``labels/`` beside the config."""
    write_synthetic(load_settings(config).inference_table_uri, spec, str(config.parent / "labels"))


def _start(config: Path, *args: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "lakeserve", "--config", str(config), *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=config.parent)


def _done(proc: subprocess.Popen[str]) -> Done:
    try:
        out, err = proc.communicate(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"{proc.args} still ran after {DEADLINE_S} s:\n{out}\n{err[-3000:]}") from None
    return Done(proc.returncode, out, err)


def _ab(folder: Path, **extra: Any) -> dict[str, Any]:
    return {
        "control": "champion", "prediction_proba_col": "probability", "label_col": "label",
        "labels_table": str(folder / "labels"), "bootstrap_resamples": 300, **extra,
    }  # fmt: skip


def test_monitor_exits_3_on_drift_when_asked_0_without_and_1_when_it_fails(config_file: Path, tmp_path: Path) -> None:
    drifted = _config(config_file, tmp_path / "drifted", monitor=MONITOR)
    _with_table(drifted, DRIFTED)
    clean = _config(config_file, tmp_path / "clean", monitor=MONITOR)
    _with_table(clean, UNDRIFTED)
    missing = _config(config_file, tmp_path / "missing", monitor=MONITOR)  # no inference table written
    runs = [_start(c, "jobs", "run", "monitor", "--fail-on-drift") for c in (drifted, clean, missing)]
    found, nothing, failed = (_done(p) for p in runs)

    assert found.code == 3, found.err[-3000:]
    assert found.result == {
        "job": "monitor", "status": "ok", "exit_code": 3, "found": True, "drifted_pairs": 4,
        "drifted_columns": ["cat_1", "num_1"], "windows_processed": 8, "windows_total": 8,
    }  # fmt: skip  # two columns, for each of the two models, at the window the drift starts
    assert "DRIFT consecutive 1 hour 2025-01-01 02:00 champion@1 num_1" in found.out  # entity@version

    assert nothing.code == 0, nothing.err[-3000:]
    assert pick(nothing.result, "exit_code", "found", "drifted_pairs", "windows_processed") == {
        "exit_code": 0, "found": False, "drifted_pairs": 0, "windows_processed": 8,
    }  # fmt: skip

    assert failed.code == 1, failed.err[-3000:]
    assert pick(failed.result, "status", "exit_code") == {"status": "failed", "exit_code": 1}
    assert failed.result["error"].startswith("delta: cannot read the Delta table at ")
    assert "Traceback" not in failed.err  # a lakeserve error: one message, on stderr
    assert "lakeserve: delta: cannot read the Delta table" in failed.err


def test_ab_exits_3_on_a_worse_treatment_and_batch_score_runs(
    config_file: Path, settings: Settings, demo_assets: DemoReport, tmp_path: Path
) -> None:
    folder = tmp_path / "ab"
    ab_config = _config(config_file, folder, ab=_ab(folder, period_days=1))
    _with_table(ab_config, DRIFTED)
    batch_input = _batch_input(demo_assets, tmp_path / "input.parquet")
    output = tmp_path / "scored"
    feature_table = f"{demo_repo.FEATURE_VIEW}={settings.table_uri(demo_repo.FEATURE_VIEW)}"
    runs = [
        _start(ab_config, "jobs", "run", "ab", "--end", "2025-01-01T04:00:00+00:00", "--fail-on-worse"),
        _start(config_file, "jobs", "run", "batch-score", "--input", str(batch_input), "--output", str(output),
               "--feature-table", feature_table),
    ]  # fmt: skip
    ab, batch = (_done(p) for p in runs)

    assert ab.code == 3, ab.err[-3000:]
    assert pick(ab.result, "status", "exit_code", "found", "control", "period_end") == {
        "status": "ok", "exit_code": 3, "found": True, "control": "champion", "period_end": "2025-01-01T04:00:00+00:00",
    }  # fmt: skip
    assert {"error_rate", "latency_ms"} <= set(ab.result["worse"]["challenger"])
    assert ab.result["verdicts"]["challenger"].startswith("challenger vs champion: worse on")
    assert "# A/B readout" in ab.out  # the Markdown readout, then the result line

    assert batch.code == 0, batch.err[-3000:]
    scored = DeltaTable(str(output)).to_pandas()
    assert batch.result == {
        "job": "batch-score", "status": "ok", "exit_code": 0, "found": False,
        "output": str(output), "output_version": 0, "input_version": None, "rows": 40, "not_scored": 0,
        "by_entity": scored[~scored.is_shadow].served_entity.value_counts().to_dict(),
        "models": batch.result["models"],
    }  # fmt: skip
    assert set(batch.result["models"]) == set(scored.served_entity)
    assert (scored[~scored.is_shadow].status_code == 200).sum() == 40


def test_schedule_runs_every_job_once_now_reports_each_and_stops_on_sigterm(
    config_file: Path, settings: Settings, demo_assets: DemoReport, tmp_path: Path
) -> None:
    folder = tmp_path / "scheduled"
    batch_input = _batch_input(demo_assets, tmp_path / "input.parquet")
    feature_tables = {demo_repo.FEATURE_VIEW: settings.table_uri(demo_repo.FEATURE_VIEW)}
    yearly = "0 0 1 1 *"  # only --run-now fires within the test
    schedule = {
        "jobs": [
            {"job": "monitor", "cron": yearly},
            {"job": "ab", "cron": yearly},
            {"job": "batch-score", "name": "nightly-scores", "cron": yearly, "batch": {
                "input": str(batch_input), "output": str(tmp_path / "scored"), "feature_tables": feature_tables}},
            {"job": "batch-score", "name": "broken-batch", "cron": yearly,
             "batch": {"input": str(tmp_path / "no-such-input"), "output": str(tmp_path / "never")}},
        ]
    }  # fmt: skip
    config = _config(config_file, folder, monitor=MONITOR, ab=_ab(folder, period_days=3650, seed=21), schedule=schedule)
    _with_table(config, NULL_SPLIT)
    proc = _start(config, "jobs", "schedule", "--run-now")
    lines = output_lines(proc)
    try:
        results = _results(lines, 4, proc)
    finally:
        proc.send_signal(signal.SIGTERM)
    done = _done(proc)
    assert done.code == 0, done.err[-3000:]  # stopped by SIGTERM, after the runs under way

    assert set(results) == {"monitor", "ab", "nightly-scores", "broken-batch"}
    assert pick(results["monitor"], "status", "found") == {"status": "ok", "found": False}
    assert pick(results["ab"], "status", "found", "worse") == {"status": "ok", "found": False, "worse": {}}
    nightly = results["nightly-scores"]
    assert pick(nightly, "job", "status", "rows") == {"job": "batch-score", "status": "ok", "rows": 40}
    assert DeltaTable(str(tmp_path / "scored")).version() == nightly["output_version"] == 0
    broken = results["broken-batch"]
    assert pick(broken, "job", "status") == {"job": "batch-score", "status": "bad-config"}  # no such input
    assert broken["error"].startswith(f"cannot read the batch input {tmp_path / 'no-such-input'}")
    assert not (tmp_path / "never").exists()


def test_a_bad_config_or_command_line_exits_2_naming_the_field(config_file: Path, tmp_path: Path) -> None:
    schedule = {"jobs": [{"job": "batch-score", "cron": "30 2 * * *", "batch": {"input": "transactions"}}]}
    bad = _config(config_file, tmp_path / "bad", schedule=schedule)
    runs = [_start(bad, "jobs", "schedule"), _start(config_file, "jobs", "run", "monitor", "--fail-on-drfit")]
    config, usage = (_done(p) for p in runs)

    assert config.code == 2
    assert "schedule.jobs.0.batch.output: Field required" in config.err
    assert "Traceback" not in config.err
    expected = {"job": "schedule", "status": "bad-config", "exit_code": 2}
    assert pick(config.result, "job", "status", "exit_code") == expected
    assert "schedule.jobs.0.batch.output: Field required" in config.result["error"]
    assert usage.code == 2
    assert "unrecognized arguments: --fail-on-drfit" in usage.err


def pick(result: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: result.get(k) for k in keys}


def _batch_input(demo: DemoReport, path: Path) -> Path:
    """40 demo transactions: the request fields at their event times."""
    assert demo.data_dir is not None
    if not path.exists():
        rows = pd.read_parquet(demo.data_dir / "transactions.parquet").head(40)
        rows[[*REQUEST_FIELDS, "event_timestamp"]].to_parquet(path, index=False)
    return path


def _results(lines: queue.Queue[str | None], count: int, proc: subprocess.Popen[str]) -> dict[str, dict[str, Any]]:
    """The first ``count`` result lines, by run name; fails at the deadline or if stdout closes."""
    results: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + DEADLINE_S
    while len(results) < count:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            pytest.fail(f"{len(results)} of {count} result lines within {DEADLINE_S} s: {results}")
        if line is None:
            pytest.fail(f"jobs schedule closed its output (exit {proc.poll()}) after {results}")
        result = parse_result(line)
        if result is not None:
            results[result.get("name", result["job"])] = result
    return results

