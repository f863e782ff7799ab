"""Session-scoped fixtures for the real components, started by lakeserve's own code: one broker
(through `lakeserve up`, as a user starts it), one Spark session, one MLflow store and one Feast
store per test session."""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml
from netutil import free_ports
from processes import output_lines

from lakeserve.pipelines.embedded.settings import StackSettings
from lakeserve.scoring.devices import cuda_device_count
from lakeserve.settings import Settings, load_settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from lakeserve.jobs.demo import DemoReport

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

TEST_OVERRIDES = {
    "kafka": {"session_timeout_ms": 6000},
    "spark": {
        "master": "local[2]",
        "shuffle_partitions": 2,
        "driver_memory": "1g",
        # tiny tables: rebuilding a Delta snapshot in 50 tasks costs more than the data
        "conf": {"spark.databricks.delta.snapshotPartitions": "2"},
    },
    "mlflow": {"ui_port": None},
    # off: `lakeserve serve` in a test would bind the default port; tests of it pick a free one
    "metrics": {"port": None},
}
SCRAM_USER, SCRAM_PASSWORD = "scorer", "s3cret-for-tests"


def pytest_sessionstart(session: pytest.Session) -> None:
    """Build SeaweedFS (tests/object_store's store) while the first tests run, at the lowest CPU
    priority: on a machine that never built it, that is minutes the suite need not wait. The
    store's fixture waits for this build (a file lock) or, if it failed, builds and reports."""
    if not session.config.option.collectonly and shutil.which("go"):
        cache = StackSettings().cache_dir.expanduser()
        threading.Thread(target=_build_quietly, args=(cache,), name="seaweedfs-build", daemon=True).start()


def _build_quietly(cache: Path) -> None:
    from lakeserve.pipelines.embedded.seaweedfs import ensure_binary

    try:
        ensure_binary(cache, background=True)
    except Exception:  # the object-store fixture builds again and raises what went wrong
        return


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The GPU suite (marker ``gpu``, tests/gpu) runs only where a CUDA device is visible;
    elsewhere its tests are deselected (pytest reports them as deselected: never run, never
    counted as passed or skipped)."""
    gpu = [item for item in items if item.get_closest_marker("gpu") is not None]
    if gpu and cuda_device_count() == 0:
        config.hook.pytest_deselected(items=gpu)
        items[:] = [item for item in items if item.get_closest_marker("gpu") is None]


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lakeserve-state")


@pytest.fixture(scope="session")
def config_file(state_dir: Path) -> Path:
    """The test session's settings as a YAML file, so subprocesses load exactly the same tree."""
    kafka_port, controller_port, ssl_port, sasl_ssl_port = free_ports(4)
    data = {
        **TEST_OVERRIDES,
        "kafka": {**TEST_OVERRIDES["kafka"], "bootstrap_servers": [f"127.0.0.1:{kafka_port}"]},
        # the one broker of the session also serves TLS and SASL_SSL (tests/stack/test_kafka_security.py)
        "stack": {
            "state_dir": str(state_dir),
            "kafka_port": kafka_port,
            "kafka_controller_port": controller_port,
            "kafka_ssl_port": ssl_port,
            "kafka_sasl_ssl_port": sasl_ssl_port,
            "kafka_scram_users": {SCRAM_USER: SCRAM_PASSWORD},
        },
    }
    path = state_dir / "lakeserve.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="session")
def settings(config_file: Path) -> Settings:
    return load_settings(config_file)


def wait_for_line(stream_lines: queue.Queue[str | None], needle: str, timeout_s: float) -> list[str]:
    """Lines read from a process until one contains ``needle``; fails at the deadline or when
    the process closes its output (None)."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            line = stream_lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            break
        if line is None:
            break
        seen.append(line)
        if needle in line:
            return seen
    raise AssertionError(f"no line with {needle!r} (deadline {timeout_s} s, or the output closed):\n{''.join(seen)}")


@pytest.fixture(scope="session")
def stack(config_file: Path, settings: Settings) -> Iterator[Settings]:
    """`lakeserve up` in the foreground; stopped by SIGINT (Ctrl-C) at the end of the session.

    Started with SIGINT ignored, as a background job of a non-interactive shell (CI) starts it:
    Ctrl-C must stop it all the same."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "lakeserve.cli", "--config", str(config_file), "up"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    lines = output_lines(proc)
    try:
        wait_for_line(lines, "stack is up", timeout_s=180)
    except AssertionError:
        proc.kill()
        raise
    yield settings
    proc.send_signal(signal.SIGINT)
    try:
        code = proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        code = None
        proc.kill()
        down = [sys.executable, "-m", "lakeserve.cli", "--config", str(config_file), "down"]
        subprocess.run(down, capture_output=True, timeout=120)  # nothing of the stack outlives the session
    assert code == 0, "lakeserve up did not stop cleanly on Ctrl-C"
    wait_for_line(lines, "stopped kafka", timeout_s=5)


@pytest.fixture(scope="session")
def demo_assets(settings: Settings) -> DemoReport:
    """Demo data, Feast services materialized into SQLite, champion and challenger in MLflow."""
    from lakeserve.jobs.demo import prepare_assets

    return prepare_assets(settings)


@pytest.fixture(scope="session")
def spark(settings: Settings) -> Iterator[SparkSession]:
    from lakeserve.jobs.spark import spark_session

    # with S3A's jars: tests/object_store meets the object store on this session, later
    session = spark_session(settings.spark, ivy_dir=settings.stack.cache_dir / "ivy", connectors=frozenset({"s3"}))
    yield session
    session.stop()
