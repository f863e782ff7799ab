"""Scale-out: N worker processes in one consumer group, each restarted if it dies.

Kafka's group protocol spreads the partitions over the workers; when one dies its partitions
move to the others after ``kafka.session_timeout_ms`` and come back when the restarted worker
joins. Nothing is lost in a move: the delivery loop skips records the table already holds and
replays the rest. SIGTERM or Ctrl-C stops every worker after its current micro-batch and flush.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from typing import Any

from lakeserve.errors import ComponentError
from lakeserve.pipelines.settings import Settings

log = logging.getLogger(__name__)

Target = Callable[[Settings, Any, Any], None]


def worker_main(settings: Settings, stop: Any, ready: Any = None) -> None:
    """Entry point of a worker process (module-level, so the spawn start method can import it)."""
    from lakeserve.pipelines.service import run_worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s [%(processName)s] %(name)s: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when to stop
    local = threading.Event()

    def relay() -> None:  # the supervisor's process-shared event, as the thread event the loop reads
        stop.wait()
        local.set()

    threading.Thread(target=relay, daemon=True).start()
    run_worker(settings, local, on_assigned=ready.set if ready is not None else lambda: None)


class Supervisor:
    """Keeps ``count`` workers alive until stopped; restarts a dead one after a short back-off."""

    def __init__(
        self, settings: Settings, count: int, target: Target = worker_main, restart_backoff_s: float = 1.0
    ) -> None:
        self.settings, self.count, self.target = settings, count, target
        self.restart_backoff_s = restart_backoff_s
        self.ctx = mp.get_context("spawn")
        self.stop_event = self.ctx.Event()
        self.workers: dict[int, BaseProcess] = {}
        self.ready: dict[int, Any] = {}  # slot -> event set once the worker holds partitions
        self.restarts = 0

    def start(self) -> None:
        for slot in range(self.count):
            self._spawn(slot)

    def run(self, stopped: threading.Event) -> None:
        """Watch the workers until ``stopped`` is set, then stop them all (starts them if needed)."""
        if not self.workers:
            self.start()
        try:
            while not stopped.wait(0.5):
                self.reap()
        finally:
            self.shutdown()

    def reap(self) -> list[int]:
        """Restart every worker that exited; returns their slots."""
        dead = [slot for slot, p in self.workers.items() if not p.is_alive()]
        for slot in dead:
            log.warning(
                "worker %d (pid %s) exited with %s; restarting",
                slot,
                self.workers[slot].pid,
                self.workers[slot].exitcode,
            )
            time.sleep(self.restart_backoff_s)  # back-off so a crash loop does not spin
            self._spawn(slot)
            self.restarts += 1
        return dead

    def shutdown(self, timeout_s: float = 60.0) -> None:
        self.stop_event.set()
        deadline = time.monotonic() + timeout_s
        for p in self.workers.values():
            p.join(max(0.1, deadline - time.monotonic()))
            if p.is_alive():
                log.error("worker pid %s did not stop in time; killing it", p.pid)
                p.kill()
                p.join(5)

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        """Block until every worker has been assigned partitions at least once."""
        deadline = time.monotonic() + timeout_s
        for slot, event in list(self.ready.items()):
            if not event.wait(max(0.0, deadline - time.monotonic())):
                raise ComponentError(
                    "workers", f"worker {slot} held no partitions after {timeout_s:.0f} s; see its log"
                )

    def pids(self) -> list[int]:
        return [p.pid for p in self.workers.values() if p.pid is not None and p.is_alive()]

    def _spawn(self, slot: int) -> None:
        # daemon: multiprocessing ends the workers when the supervisor exits, whatever the path
        self.ready[slot] = self.ctx.Event()
        p = self.ctx.Process(
            target=self.target,
            args=(self.settings, self.stop_event, self.ready[slot]),
            name=f"worker-{slot}",
            daemon=True,
        )
        p.start()
        self.workers[slot] = p
