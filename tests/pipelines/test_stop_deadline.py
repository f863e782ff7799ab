"""`lakeserve serve` has a bound on its stop, which a deployment's grace period is sized by: the
bound adds up what the stop waits for, and the deadline ends a process that passes it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from lakeserve.pipelines.settings import ServiceSettings
from lakeserve.pipelines.stop_deadline import exit_when_stop_hangs, rest_drain_s, serve_stop_timeout_s

ROOT = Path(__file__).parents[2]


def settings(stop_timeout_ms: int = 6000, timeout_s: float = 60.0) -> ServiceSettings:
    return ServiceSettings.model_validate(
        {"kafka": {"stop_timeout_ms": stop_timeout_ms}, "endpoint": {"limits": {"timeout_s": timeout_s}}}
    )


def test_the_bound_adds_up_what_each_side_waits_for() -> None:
    s = settings(stop_timeout_ms=8000, timeout_s=20.5)
    # workers: their own deadline, the supervisor's kill 1 s later, the metrics endpoint's 5 s; then 2 s
    assert serve_stop_timeout_s(s, workers=2, http=False) == 8 + 1 + 5 + 2
    # REST: requests in flight (uvicorn waits whole seconds), then the last append; then 2 s
    assert rest_drain_s(s.endpoint.limits) == 21
    assert serve_stop_timeout_s(s, workers=0, http=True) == 21 + 8 + 2
    # both at once: they stop side by side, so the longer one
    assert serve_stop_timeout_s(s, workers=2, http=True) == 21 + 8 + 2
    assert serve_stop_timeout_s(settings(timeout_s=1), workers=2, http=True) == 6 + 1 + 5 + 2


def test_the_deadline_runs_out_only_after_the_stop() -> None:
    stop, expired = threading.Event(), threading.Event()
    exit_when_stop_hangs(stop, 0.2, "the test", on_expiry=expired.set)
    assert not expired.wait(0.5)  # not told to stop: no deadline runs
    started = time.monotonic()
    stop.set()
    assert expired.wait(5)
    assert time.monotonic() - started >= 0.2


def test_a_process_whose_stop_hangs_exits_at_its_deadline() -> None:
    """A non-daemon thread that never ends (a stuck server thread) would keep the interpreter alive."""
    script = textwrap.dedent("""
        import threading
        from lakeserve.pipelines.stop_deadline import exit_when_stop_hangs
        stop = threading.Event()
        exit_when_stop_hangs(stop, 0.5, "the test process")
        threading.Thread(target=threading.Event().wait).start()  # never ends, not a daemon
        stop.set()
    """)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT,
                          check=False)  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert time.monotonic() - started < 30
    assert "the test process did not stop within 0.5 s" in done.stderr
