"""The scheduler wires cron triggers for the configured jobs (batch scoring too) and reports each
run as a result line (real APScheduler); the schedule section names the field at fault."""

from __future__ import annotations

import queue
from datetime import UTC, datetime

import pytest

from lakeserve.errors import ComponentError, ConfigError
from lakeserve.jobs.outcome import ExitCode, JobOutcome, failure_line, outcome_line, parse_result
from lakeserve.jobs.schedule import build_scheduler
from lakeserve.jobs.settings import JobSchedule, ScheduledBatch, ScheduleSettings
from lakeserve.settings import load_settings

BATCH = ScheduledBatch(input="transactions", output="transactions_scored", params={"threshold": 0.4})


def test_cron_triggers_fire_at_the_expected_times() -> None:
    settings = ScheduleSettings(
        jobs=[
            JobSchedule(job="monitor", cron="*/15 * * * *"),
            JobSchedule(job="ab", cron="0 6 * * *"),
            JobSchedule(job="batch-score", name="nightly-scores", cron="30 2 * * *", batch=BATCH),
        ]
    )
    jobs = {"monitor": _nothing, "ab": _nothing, "batch-score": _nothing}
    sched = build_scheduler(settings, jobs, print)
    now = datetime(2025, 1, 1, 5, 7, tzinfo=UTC)
    fires = {j.id: j.trigger.get_next_fire_time(None, now) for j in sched.get_jobs()}
    assert fires == {
        "monitor": datetime(2025, 1, 1, 5, 15, tzinfo=UTC),
        "ab": datetime(2025, 1, 1, 6, 0, tzinfo=UTC),
        "nightly-scores": datetime(2025, 1, 2, 2, 30, tzinfo=UTC),
    }


def test_each_run_reports_a_result_line_and_a_failing_one_does_not_stop_the_others() -> None:
    lines: queue.Queue[str] = queue.Queue()
    seen: list[JobSchedule] = []

    def scored(entry: JobSchedule) -> JobOutcome:
        seen.append(entry)
        return JobOutcome("batch-score", False, "12 rows", {"rows": 12})

    def fail(entry: JobSchedule) -> JobOutcome:
        raise ComponentError("delta", "cannot read s3://key:secret@lake/payload")

    settings = ScheduleSettings(
        jobs=[
            JobSchedule(job="ab", cron="0 0 1 1 *"),
            JobSchedule(job="batch-score", cron="0 0 1 1 *", batch=BATCH),
        ]
    )
    sched = build_scheduler(settings, {"ab": fail, "batch-score": scored}, lines.put, run_now=True)
    sched.start()
    try:
        results = {r["job"]: r for r in (parse_result(lines.get(timeout=30)) for _ in range(2)) if r}
    finally:
        sched.shutdown(wait=True)
    assert results == {
        "ab": {"job": "ab", "status": "failed", "error": "delta: cannot read s3://key:***@lake/payload"},
        "batch-score": {"job": "batch-score", "status": "ok", "found": False, "rows": 12},
    }
    assert seen == [settings.jobs[1]]  # the runner gets its entry, with the batch section


def test_exit_codes_and_result_lines() -> None:
    drift = JobOutcome("monitor", True, "DRIFT ...", {"drifted_columns": ["num_1"]})
    assert drift.exit_code(fail_on_found=False) == ExitCode.OK == 0
    assert drift.exit_code(fail_on_found=True) == ExitCode.FOUND == 3
    assert JobOutcome("monitor", False, "").exit_code(fail_on_found=True) == ExitCode.OK
    line = outcome_line(drift, name="hourly-monitor", exit_code=3)
    assert line == (
        'lakeserve-result: {"job": "monitor", "name": "hourly-monitor", "status": "ok", "exit_code": 3, '
        '"found": true, "drifted_columns": ["num_1"]}'
    )
    assert parse_result(f"summary\n{line}\n") == {
        "job": "monitor", "name": "hourly-monitor", "status": "ok", "exit_code": 3, "found": True,
        "drifted_columns": ["num_1"],
    }  # fmt: skip
    bad = failure_line("ab", ConfigError("ab.control: 'x' has no rows"), exit_code=2)
    error = "ab.control: 'x' has no rows"
    assert parse_result(bad) == {"job": "ab", "status": "bad-config", "exit_code": 2, "error": error}
    assert parse_result("no result here") is None


CRON = "0 2 * * *"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"job": "batch-score", "cron": CRON}, "jobs.0.batch: a scheduled batch-score needs its tables"),
        ({"job": "batch-score", "cron": CRON, "batch": {"input": "t"}}, "jobs.0.batch.output: Field required"),
        ({"job": "monitor", "cron": "61 * * * *"}, "jobs.0.cron: not a five-field crontab expression"),
        ({"job": "ab", "cron": CRON, "batch": {"input": "a", "output": "b"}}, "jobs.0.batch: only a batch-score"),
        ({"job": "maintenance", "cron": CRON}, "jobs.0.job: Input should be 'monitor', 'ab' or 'batch-score'"),
    ],
)
def test_a_bad_schedule_entry_names_its_field(entry: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match="invalid settings") as caught:
        load_settings(overrides={"schedule": {"jobs": [entry]}})
    assert f"schedule.{message}" in str(caught.value)


def test_two_entries_need_two_names() -> None:
    twice = [{"job": "monitor", "cron": "*/5 * * * *"}, {"job": "monitor", "cron": "0 * * * *"}]
    with pytest.raises(ConfigError, match=r"schedule.jobs: two entries are named \['monitor'\]"):
        load_settings(overrides={"schedule": {"jobs": twice}})
    named = load_settings(overrides={"schedule": {"jobs": [twice[0], {**twice[1], "name": "hourly"}]}})
    assert [j.run_name for j in named.schedule.jobs] == ["monitor", "hourly"]


def test_a_job_the_runner_does_not_know_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"schedule\.jobs\.1\.job: no job named 'ab'"):
        build_scheduler(ScheduleSettings(), {"monitor": _nothing}, print)


def _nothing(entry: JobSchedule) -> JobOutcome:
    return JobOutcome(entry.job, False, "")
