"""docs/airflow_dag.py compiles, its commands are ones the CLI accepts, and it reads the result line
lakeserve prints. Airflow is not installed: the file's own definitions are taken from its source."""

from __future__ import annotations

import ast
import json
import py_compile
import shlex
from pathlib import Path
from typing import Any

import pytest

from lakeserve.cli import build_parser
from lakeserve.errors import ComponentError
from lakeserve.jobs.outcome import RESULT_PREFIX, JobOutcome, failure_line, outcome_line

DAG_FILE = Path(__file__).parents[2] / "docs" / "airflow_dag.py"


def _definitions() -> dict[str, Any]:
    """RESULT_PREFIX, COMMANDS and found() of the DAG file, run without its Airflow imports."""
    tree = ast.parse(DAG_FILE.read_text())
    wanted = {"RESULT_PREFIX", "COMMANDS"}
    keep = [
        node
        for node in tree.body
        if (isinstance(node, ast.Assign) and {getattr(t, "id", "") for t in node.targets} & wanted)
        or (isinstance(node, ast.FunctionDef) and node.name == "found")
    ]
    namespace: dict[str, Any] = {"json": json, "Any": Any}
    exec(compile(ast.Module(body=keep, type_ignores=[]), str(DAG_FILE), "exec"), namespace)
    return namespace


def test_the_dag_file_compiles(tmp_path: Path) -> None:
    py_compile.compile(str(DAG_FILE), cfile=str(tmp_path / "dag.pyc"), doraise=True)


def test_its_commands_are_the_clis_and_it_reads_the_result_line() -> None:
    dag = _definitions()
    assert dag["RESULT_PREFIX"] == RESULT_PREFIX
    parser = build_parser()
    jobs = {name: parser.parse_args(shlex.split(args)).job for name, args in dag["COMMANDS"].items()}
    assert jobs == {"monitor": "monitor", "ab": "ab", "batch_score": "batch-score"}

    found = dag["found"]
    assert found(outcome_line(JobOutcome("monitor", True, "", {"drifted_pairs": 2}), exit_code=0)) is True
    assert found(outcome_line(JobOutcome("ab", False, "", {"worse": {}}), exit_code=0)) is False
    assert found(failure_line("monitor", ComponentError("delta", "down"))) is False
    with pytest.raises(ValueError, match="no result line"):
        found("windows: 0 processed of 8")
