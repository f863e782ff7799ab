"""The scheduler wires cron triggers for the configured jobs and runs them (real APScheduler)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest

from lakeserve.errors import ConfigError
from lakeserve.jobs.schedule import build_scheduler
from lakeserve.jobs.settings import JobSchedule, ScheduleSettings


def test_cron_triggers_fire_at_the_expected_times() -> None:
    settings = ScheduleSettings(
        jobs=[JobSchedule(job="monitor", cron="*/15 * * * *"), JobSchedule(job="ab", cron="0 6 * * *")]
    )
    sched = build_scheduler(settings, {"monitor": lambda: None, "ab": lambda: None}, blocking=False)
    now = datetime(2025, 1, 1, 5, 7, tzinfo=UTC)
    fires = {j.id: j.trigger.get_next_fire_time(None, now) for j in sched.get_jobs()}
    assert fires == {
        "monitor": datetime(2025, 1, 1, 5, 15, tzinfo=UTC),
        "ab": datetime(2025, 1, 1, 6, 0, tzinfo=UTC),
    }


def test_a_scheduled_job_runs_and_a_failing_one_does_not_stop_it() -> None:
    ran = threading.Event()

    def fail() -> None:
        raise RuntimeError("boom")

    settings = ScheduleSettings(
        jobs=[JobSchedule(job="ab", cron="* * * * *"), JobSchedule(job="monitor", cron="* * * * *")]
    )
    sched = build_scheduler(settings, {"monitor": ran.set, "ab": fail}, blocking=False)
    sched.start(paused=True)
    try:
        for job in sched.get_jobs():
            job.modify(next_run_time=datetime.now(UTC))
        sched.resume()
        assert ran.wait(timeout=10)
    finally:
        sched.shutdown(wait=True)


def test_unknown_job_and_bad_cron_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="no job named"):
        build_scheduler(ScheduleSettings(), {"monitor": lambda: None}, blocking=False)
    bad = ScheduleSettings(jobs=[JobSchedule(job="monitor", cron="61 * * * *")])
    with pytest.raises(ConfigError, match="cron"):
        build_scheduler(bad, {"monitor": lambda: None}, blocking=False)
