"""What a job run tells a scheduler: its exit code and one machine-readable result line.

Every job run (``lakeserve jobs run ...`` and each run of ``lakeserve jobs schedule``) ends with
one line on stdout::

    lakeserve-result: {"job": "monitor", "status": "ok", "found": true, "exit_code": 3, ...}

``status`` is ``ok`` (the job ran), ``failed`` or ``bad-config``; ``found`` says whether the job
found what it looks for (monitor: drift; ab: a treatment significantly worse than the control;
batch-score: rows that could not be scored). The exit codes are :class:`ExitCode`; the table of
both is in docs/airflow.md.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Literal

from lakeserve.errors import ConfigError
from lakeserve.redact import redact_text

RESULT_PREFIX = "lakeserve-result: "
Status = Literal["ok", "failed", "bad-config"]


class ExitCode(IntEnum):
    OK = 0  # the job ran; it found nothing, or was not asked to fail on what it found
    FAILED = 1  # the job failed: a component, a Spark job, a bug (the traceback is on stderr)
    BAD_CONFIG = 2  # the settings or the command line are wrong; the message names the field
    FOUND = 3  # the job ran and found what it looks for, and --fail-on-drift / --fail-on-worse was given


@dataclass(frozen=True)
class JobOutcome:
    """One run that completed: whether it found something, its summary for people, its facts."""

    job: str  # monitor, ab, batch-score
    found: bool
    summary: str  # printed before the result line
    facts: Mapping[str, Any] = field(default_factory=dict)  # JSON-able, added to the result line

    def exit_code(self, fail_on_found: bool) -> ExitCode:
        return ExitCode.FOUND if self.found and fail_on_found else ExitCode.OK


def outcome_line(outcome: JobOutcome, *, name: str | None = None, exit_code: int | None = None) -> str:
    """The result line of a run that completed (``name``: the schedule entry's, when it differs)."""
    record = _head(outcome.job, name, "ok", exit_code) | {"found": outcome.found, **outcome.facts}
    return RESULT_PREFIX + json.dumps(record, default=str)


def failure_status(exc: BaseException) -> Status:
    return "bad-config" if isinstance(exc, ConfigError) else "failed"


def failure_code(exc: BaseException) -> ExitCode:
    return ExitCode.BAD_CONFIG if isinstance(exc, ConfigError) else ExitCode.FAILED


def failure_line(job: str, exc: BaseException, *, name: str | None = None, exit_code: int | None = None) -> str:
    """The result line of a run that did not complete; the error's credentials are masked."""
    error = redact_text(str(exc)) or type(exc).__name__
    record = _head(job, name, failure_status(exc), exit_code) | {"error": error}
    return RESULT_PREFIX + json.dumps(record, default=str)


def parse_result(output: str) -> dict[str, Any] | None:
    """The last result line in ``output`` (a job's stdout), as a dict; None when there is none."""
    for line in reversed(output.splitlines()):
        if line.startswith(RESULT_PREFIX):
            value: dict[str, Any] = json.loads(line.removeprefix(RESULT_PREFIX))
            return value
    return None


def _head(job: str, name: str | None, status: Status, exit_code: int | None) -> dict[str, Any]:
    head: dict[str, Any] = {"job": job}
    if name is not None and name != job:
        head["name"] = name
    head["status"] = status
    if exit_code is not None:
        head["exit_code"] = int(exit_code)
    return head
