"""The supervisor's own contract, without Kafka: it restarts a dead worker, it can still stop
every worker after one was SIGKILLed, and a worker whose supervisor is gone stops by itself."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time

from supervisor_targets import idle_worker

from lakeserve.pipelines.supervisor import Supervisor, WorkerLink
from lakeserve.settings import Settings


def wait_until(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {timeout_s} s"
        threading.Event().wait(0.05)


def test_every_worker_stops_after_one_was_sigkilled() -> None:
    supervisor = Supervisor(Settings(), 2, target=idle_worker, restart_backoff_s=0.1)
    stopped = threading.Event()
    runner = threading.Thread(target=supervisor.run, args=(stopped,), daemon=True)
    supervisor.start()
    runner.start()
    supervisor.wait_ready(timeout_s=60)
    first = supervisor.pids()
    os.kill(first[0], signal.SIGKILL)  # killed while it waits for the stop order
    wait_until(lambda: supervisor.restarts == 1, 30, "the killed worker is restarted")
    supervisor.wait_ready(timeout_s=60)
    survivors = supervisor.pids()
    assert len(survivors) == 2
    assert first[0] not in survivors
    assert first[1] in survivors

    stopped.set()
    runner.join(timeout=30)
    assert not runner.is_alive(), "the supervisor could not stop its workers"
    assert [s.process.exitcode for s in supervisor.slots.values()] == [0, 0]  # stopped, not killed


def test_a_worker_stops_when_its_supervisor_is_gone() -> None:
    ctx = mp.get_context("spawn")
    orders_r, orders_w = ctx.Pipe(duplex=False)
    reports_r, reports_w = ctx.Pipe(duplex=False)
    worker = ctx.Process(target=idle_worker, args=(Settings(), WorkerLink(orders_r, reports_w)), daemon=True)
    worker.start()
    orders_r.close()
    reports_w.close()
    assert reports_r.poll(60), "the worker never reported"
    assert reports_r.recv() == "assigned"
    orders_w.close()  # what the supervisor's death looks like from the worker
    worker.join(timeout=30)
    assert worker.exitcode == 0
