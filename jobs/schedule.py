"""Run the configured jobs on cron expressions in one process (APScheduler 3.x, UTC).

Each job keeps its own entry point (``python -m lakeserve.jobs.monitor``, ``... ab_test``)
for spark-submit, cron or Airflow; this is the single-process alternative. One Spark session
is shared by the jobs; ``max_instances`` keeps a slow run from overlapping the next one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from lakeserve.errors import ConfigError
from lakeserve.jobs import ab_analysis, monitor
from lakeserve.jobs.settings import JobSettings, ScheduleSettings

if TYPE_CHECKING:
    from apscheduler.schedulers.base import BaseScheduler


log = logging.getLogger("lakeserve.jobs.schedule")
JobFn = Callable[[], object]


def build_scheduler(
    schedule: ScheduleSettings, jobs: Mapping[str, JobFn], *, blocking: bool = True
) -> BaseScheduler:
    """A scheduler with one cron trigger per configured job; ``jobs`` maps names to callables."""
    try:
        from apscheduler.schedulers.background import BackgroundScheduler
        from apscheduler.schedulers.blocking import BlockingScheduler
        from apscheduler.triggers.cron import CronTrigger
    except ImportError as exc:
        raise ConfigError("scheduling needs APScheduler: pip install 'apscheduler>=3.10,<4'") from exc
    scheduler = (BlockingScheduler if blocking else BackgroundScheduler)(timezone="UTC")
    for entry in schedule.jobs:
        if entry.job not in jobs:
            raise ConfigError(f"schedule.jobs: no job named {entry.job!r} (known: {sorted(jobs)})")
        try:
            trigger = CronTrigger.from_crontab(entry.cron, timezone="UTC")
        except ValueError as exc:
            raise ConfigError(f"schedule.jobs[{entry.job}].cron: {exc}") from None
        scheduler.add_job(
            _logged(entry.job, jobs[entry.job]),
            trigger,
            id=entry.job,
            name=entry.job,
            max_instances=schedule.max_instances,
            misfire_grace_time=schedule.misfire_grace_s,
            coalesce=True,
        )
        log.info("schedule: %s on '%s' (UTC)", entry.job, entry.cron)
    return scheduler


def _logged(name: str, fn: JobFn) -> Callable[[], None]:
    def run() -> None:
        log.info("schedule: %s starts", name)
        try:
            result = fn()
        except Exception:  # one failed run must not stop the scheduler
            log.exception("schedule: %s failed", name)
            return
        log.info("schedule: %s done: %s", name, result)

    return run


def settings_jobs(settings: JobSettings) -> dict[str, JobFn]:
    """The monitor and A/B jobs bound to one settings tree (they share one Spark session)."""

    return {
        "monitor": lambda: monitor.run_from_settings(settings),
        "ab": lambda: ab_analysis.run_from_settings(settings),
    }


def run_schedule(settings: JobSettings) -> None:
    """Block, running the jobs of ``settings.schedule`` on their cron expressions."""
    build_scheduler(settings.schedule, settings_jobs(settings)).start()
