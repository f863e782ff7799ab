"""An Airflow DAG for lakeserve's jobs, on the plain entry points (docs/airflow.md explains it).

Copy it into your DAGs folder and set CONFIG and PYTHON. Every task is a BashOperator running
``python -m lakeserve --config FILE jobs run JOB``; the exit code says whether the job ran (0),
failed (1) or was misconfigured (2), and the last stdout line is the job's result line
(``lakeserve-result: {...}``), which BashOperator pushes to XCom. A drift found or a worse
treatment does not fail the job's task: a short-circuit task reads the result line and lets the
alert task run only then, so Airflow's retries are for real failures only.

Written for Airflow 2.6+ and 3 (BashOperator moved to the standard provider in 3). The tests
compile this file (``python -m py_compile``) and parse its commands with lakeserve's own parser;
they do not need Airflow.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

from airflow import DAG

try:  # Airflow 3
    from airflow.providers.standard.operators.bash import BashOperator
    from airflow.providers.standard.operators.python import ShortCircuitOperator
except ImportError:  # Airflow 2
    from airflow.operators.bash import BashOperator
    from airflow.operators.python import ShortCircuitOperator

PYTHON = "/opt/lakeserve/.venv/bin/python"
CONFIG = "/etc/lakeserve/lakeserve.yaml"
LAKESERVE = f"{PYTHON} -m lakeserve --config {CONFIG}"
RESULT_PREFIX = "lakeserve-result: "

COMMANDS = {  # the argument lists after ``python -m lakeserve --config FILE``
    "monitor": "jobs run monitor",
    "ab": "jobs run ab",
    "batch_score": "jobs run batch-score --input transactions --output transactions_scored",
}
DEFAULTS = {"retries": 2, "retry_delay": timedelta(minutes=5)}  # for real failures (exit 1)


def found(result_line: str | None) -> bool:
    """Whether the job found something (drift, a worse treatment): its result line's ``found``."""
    if not result_line or not result_line.startswith(RESULT_PREFIX):
        raise ValueError(f"the job printed no result line last: {result_line!r}")
    result: dict[str, Any] = json.loads(result_line.removeprefix(RESULT_PREFIX))
    return bool(result.get("found"))


def _alert(task_id: str, job: str) -> BashOperator:
    # Replace with your notifier (Slack, e-mail, PagerDuty); the result line holds the details.
    line = "{{ ti.xcom_pull(task_ids='" + job + "') }}"
    return BashOperator(task_id=task_id, bash_command=f"echo 'lakeserve {job} found something: {line}'")


with DAG(
    dag_id="lakeserve_monitoring",
    schedule="*/15 * * * *",  # as the default schedule section: the monitor every 15 minutes
    start_date=datetime(2025, 1, 1, tzinfo=timezone.utc),  # noqa: UP017 (Airflow 2 runs on Python 3.9+)
    catchup=False,
    max_active_runs=1,  # a slow run must not overlap the next one
    default_args=DEFAULTS,
) as monitoring:
    monitor = BashOperator(task_id="monitor", bash_command=f"{LAKESERVE} {COMMANDS['monitor']}")
    drift_found = ShortCircuitOperator(
        task_id="drift_found",
        python_callable=found,
        op_args=["{{ ti.xcom_pull(task_ids='monitor') }}"],
    )
    monitor >> drift_found >> _alert("alert_drift", "monitor")

with DAG(
    dag_id="lakeserve_nightly",
    schedule="30 2 * * *",
    start_date=datetime(2025, 1, 1, tzinfo=timezone.utc),  # noqa: UP017
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULTS,
) as nightly:
    batch_score = BashOperator(task_id="batch_score", bash_command=f"{LAKESERVE} {COMMANDS['batch_score']}")
    ab = BashOperator(task_id="ab", bash_command=f"{LAKESERVE} {COMMANDS['ab']}")
    worse = ShortCircuitOperator(
        task_id="treatment_worse",
        python_callable=found,
        op_args=["{{ ti.xcom_pull(task_ids='ab') }}"],
    )
    batch_score >> ab >> worse >> _alert("alert_ab", "ab")
