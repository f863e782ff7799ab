"""`lakeserve serve` stops promptly on SIGTERM (Kubernetes gives 30 s, then kills): within 10 s with
the broker up, and within 10 s with the broker hung (its process stopped with SIGSTOP)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest_helpers import answers_for, body, broker_hung, produce, settings_for

from lakeserve.pipelines.settings import write_settings
from lakeserve.settings import Settings

STOP_WITHIN_S = 10.0


@contextmanager
def serving(settings: Settings, folder: Path) -> Iterator[subprocess.Popen[str]]:
    """`lakeserve serve --workers 1` in its own process, ready once it answered one request."""
    config = write_settings(settings, folder / "lakeserve.yaml")
    log = (folder / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "lakeserve.cli", "--config", str(config), "serve", "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        produce(settings, [body(customer_id=3)])
        answers_for(settings, 1, timeout_s=180)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        log.close()


def stop_time(proc: subprocess.Popen[str]) -> float:
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("lakeserve serve did not stop within 60 s of SIGTERM")
    return time.monotonic() - started


def test_sigterm_stops_the_service_within_10_s(stack: Settings, demo_assets: object, tmp_path: Path) -> None:
    settings = settings_for(stack, "stop-broker-up")
    with serving(settings, tmp_path) as proc:
        seconds = stop_time(proc)
    assert proc.returncode == 0, (tmp_path / "serve.log").read_text()[-3000:]
    assert seconds < STOP_WITHIN_S, f"took {seconds:.1f} s"


def test_sigterm_stops_the_service_within_10_s_with_the_broker_hung(
    stack: Settings, demo_assets: object, tmp_path: Path
) -> None:
    settings = settings_for(stack, "stop-broker-hung")
    with serving(settings, tmp_path) as proc, broker_hung(settings):
        seconds = stop_time(proc)
    assert seconds < STOP_WITHIN_S, f"took {seconds:.1f} s:\n{(tmp_path / 'serve.log').read_text()[-3000:]}"
