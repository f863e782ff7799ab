"""Run the configured jobs on cron expressions in one process (APScheduler 3.x, UTC).

Each job is also a plain command (``python -m lakeserve --config FILE jobs run monitor``, ``... ab``,
``... batch-score``) for spark-submit, cron or Airflow; this is the single-process alternative.
One Spark session is shared by the jobs; ``max_instances`` keeps a slow run from overlapping the
next one. Every run ends with its result line (:mod:`.outcome`) handed to ``emit`` (stdout in
the CLI); a run that fails is logged and reported, and the scheduler goes on.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger

from lakeserve.errors import ConfigError, LakeserveError
from lakeserve.jobs import ab_analysis, batch_score, monitor
from lakeserve.jobs.outcome import JobOutcome, failure_line, outcome_line
from lakeserve.jobs.settings import JobSchedule, JobSettings, ScheduleSettings

log = logging.getLogger("lakeserve.jobs.schedule")
JobFn = Callable[[JobSchedule], JobOutcome]  # one run of a schedule entry
Emit = Callable[[str], None]


def build_scheduler(
    schedule: ScheduleSettings, jobs: Mapping[str, JobFn], emit: Emit, *, run_now: bool = False
) -> BackgroundScheduler:
    """A scheduler (not started) with one cron trigger per entry of ``schedule.jobs``; ``jobs``
    maps job names to what runs them. ``run_now``: each entry also runs once as soon as it starts."""
    scheduler = BackgroundScheduler(timezone="UTC")
    first: dict[str, Any] = {"next_run_time": datetime.now(UTC)} if run_now else {}
    for i, entry in enumerate(schedule.jobs):
        if entry.job not in jobs:
            raise ConfigError(f"schedule.jobs.{i}.job: no job named {entry.job!r} (known: {sorted(jobs)})")
        scheduler.add_job(
            _reported(entry, jobs[entry.job], emit),
            CronTrigger.from_crontab(entry.cron, timezone="UTC"),  # checked when the settings loaded
            id=entry.run_name,
            name=entry.run_name,
            max_instances=schedule.max_instances,
            misfire_grace_time=schedule.misfire_grace_s,
            coalesce=True,
            **first,
        )
        log.info("schedule: %s on '%s' (UTC)", entry.run_name, entry.cron)
    return scheduler


def _reported(entry: JobSchedule, fn: JobFn, emit: Emit) -> Callable[[], None]:
    name = entry.run_name

    def run() -> None:
        log.info("schedule: %s starts", name)
        try:
            outcome = fn(entry)
        except LakeserveError as exc:
            log.error("schedule: %s failed: %s", name, exc)
            emit(failure_line(entry.job, exc, name=name))
            return
        except Exception as exc:  # one failed run must not stop the scheduler
            log.exception("schedule: %s failed", name)
            emit(failure_line(entry.job, exc, name=name))
            return
        found = " (found: see the result line)" if outcome.found else ""
        (log.warning if outcome.found else log.info)("schedule: %s done%s:\n%s", name, found, outcome.summary)
        emit(outcome_line(outcome, name=name))

    return run


def settings_jobs(settings: JobSettings) -> dict[str, JobFn]:
    """The jobs bound to one settings tree (they share one Spark session)."""
    return {
        "monitor": lambda entry: monitor.run_from_settings(settings),
        "ab": lambda entry: ab_analysis.run_from_settings(settings),
        "batch-score": lambda entry: _batch(settings, entry),
    }


def _batch(settings: JobSettings, entry: JobSchedule) -> JobOutcome:
    if entry.batch is None:  # refused when the settings loaded; kept for a tree built by hand
        raise ConfigError(f"schedule.jobs: {entry.run_name} has no batch section")
    return batch_score.run_from_settings(settings, entry.batch.input, entry.batch.output, entry.batch.options())


def run_schedule(settings: JobSettings, stop: threading.Event, emit: Emit, *, run_now: bool = False) -> None:
    """Run the jobs of ``settings.schedule`` on their cron expressions until ``stop`` is set; then
    wait for the runs under way and return."""
    scheduler = build_scheduler(settings.schedule, settings_jobs(settings), emit, run_now=run_now)
    scheduler.start()
    try:
        for job in scheduler.get_jobs():
            log.info("schedule: %s next runs at %s", job.id, job.next_run_time)
        while not stop.wait(1.0):
            pass
        log.info("schedule: stopping after the runs under way")
    finally:
        scheduler.shutdown(wait=True)
