"""Scale-out: N worker processes in one consumer group, each restarted if it dies.

Kafka's group protocol spreads the partitions over the workers; when one dies its partitions
move to the others after ``kafka.session_timeout_ms`` and come back when the restarted worker
joins. Nothing is lost in a move: the delivery loop skips records the table already holds and
replays the rest. SIGTERM or Ctrl-C stops every worker after its current micro-batch and flush.

Each worker talks to the supervisor through two one-way pipes (:class:`WorkerLink`): stop orders
in; reports out ("assigned partitions", and the worker's metrics events when the supervisor
keeps metrics, see :mod:`lakeserve.pipelines.metrics_relay`); :meth:`Supervisor.readiness` is what
the metrics endpoint's ``/ready`` answers (:mod:`lakeserve.pipelines.metrics_server`). One reader thread in the
supervisor reads every report pipe. Not a ``multiprocessing.Event`` for stopping: its condition
variable counts sleepers, and once a worker waiting on it is SIGKILLed, ``set()`` blocks forever
waiting for that sleeper to wake, so a supervisor that had lost one worker could never stop the
others. A pipe also tells a worker when its supervisor is gone (end of file): no worker outlives it.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from lakeserve.errors import ComponentError
from lakeserve.pipelines.crash_guard import DONE, IN_FLIGHT, CrashGuard, CrashLedger, Span
from lakeserve.pipelines.delivery_loop import WorkerStalled
from lakeserve.pipelines.metrics import ServiceMetrics
from lakeserve.pipelines.metrics_relay import MetricsRelay, apply
from lakeserve.pipelines.metrics_server import READY
from lakeserve.pipelines.settings import ServiceSettings
from lakeserve.pipelines.stop_deadline import exit_when_stop_hangs, hard_exit, worker_stop_s
from lakeserve.pipelines.worker import run_worker
from lakeserve.scoring.devices import hide_gpus_unless_needed

log = logging.getLogger(__name__)

STOP, ASSIGNED = "stop", "assigned"


class WorkerLink:
    """A worker's ends of its pipes to the supervisor (picklable: it crosses the spawn)."""

    def __init__(self, orders: Connection, reports: Connection, relay_metrics: bool = False) -> None:
        self._orders, self._reports, self.relay_metrics = orders, reports, relay_metrics
        self._send_lock = threading.Lock()
        self.guard = CrashGuard(self._report_quietly)  # fed by the supervisor's orders

    def __getstate__(self) -> tuple[Connection, Connection, bool]:
        return self._orders, self._reports, self.relay_metrics

    def __setstate__(self, state: tuple[Connection, Connection, bool]) -> None:
        self.__init__(*state)  # type: ignore[misc]

    def stop_event(self) -> threading.Event:
        """An event set when the supervisor says stop, when it is gone, or on SIGTERM."""
        stop = threading.Event()

        def relay() -> None:
            try:
                while (order := self._orders.recv()) != STOP:
                    self.guard.order(*order)  # suspect or quarantined records
            except (EOFError, OSError):
                log.warning("the supervisor is gone; stopping after the current micro-batch")
            stop.set()

        threading.Thread(target=relay, name="stop-relay", daemon=True).start()
        if threading.current_thread() is threading.main_thread():
            # set from a fresh thread: the handler may interrupt the main thread inside stop's own lock
            signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=stop.set).start())
        return stop

    def assigned(self) -> None:
        """Report that the group gave this worker partitions (readiness)."""
        with contextlib.suppress(OSError):  # the supervisor is gone; the stop relay ends the worker
            self.report(ASSIGNED)

    def metrics(self) -> MetricsRelay | None:
        """The loop's metrics hook, when the supervisor keeps metrics (``lakeserve serve``, unless
        both ``metrics.port`` and ``--http`` are off)."""
        return MetricsRelay(self.report) if self.relay_metrics else None

    def report(self, message: Any) -> None:
        with self._send_lock:
            self._reports.send(message)

    def _report_quietly(self, message: Any) -> None:
        with contextlib.suppress(OSError):  # the supervisor is gone; the stop relay ends the worker
            self.report(message)


Target = Callable[[ServiceSettings, WorkerLink], None]


EXIT_STALLED = 75  # a model call never returned: replace this worker


def worker_main(settings: ServiceSettings, link: WorkerLink) -> None:
    """Entry point of a worker process (module-level, so the spawn start method can import it).

    The process ends with ``os._exit``: a model call stuck in a thread would otherwise keep the
    interpreter from exiting. Once told to stop, it exits within ``kafka.stop_timeout_ms`` even
    if its last append or commit cannot finish (the broker or the table is down): the records
    not committed are replayed by the next owner, so nothing is lost."""

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s [%(processName)s] %(name)s: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the supervisor decides
    hide_gpus_unless_needed(settings.endpoint.served_entities)  # before any model loads
    stop = link.stop_event()
    exit_when_stop_hangs(stop, settings.kafka.stop_timeout_ms / 1000, "the worker")
    code = 0
    try:
        run_worker(settings, stop, metrics=link.metrics(), on_assigned=link.assigned, guard=link.guard)
    except WorkerStalled as exc:
        log.error("%s", exc)
        code = EXIT_STALLED
    hard_exit(code)


@dataclass
class _Slot:
    number: int
    process: BaseProcess
    orders: Connection  # supervisor -> worker
    reports: Connection  # worker -> supervisor; read (and closed) by the reader thread only
    ready: threading.Event = field(default_factory=threading.Event)
    in_flight: list[Span] = field(default_factory=list)  # what it was scoring, as last reported
    gone: threading.Event = field(default_factory=threading.Event)  # its report pipe reached its end


class Supervisor:
    """Keeps ``count`` workers alive until stopped; restarts a dead one after a short back-off.

    With ``metrics``, the workers' metrics events are recorded in it (see ``metrics_relay``).
    """

    def __init__(
        self,
        settings: ServiceSettings,
        count: int,
        target: Target = worker_main,
        restart_backoff_s: float = 1.0,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self.settings, self.count, self.target = settings, count, target
        self.restart_backoff_s, self.metrics = restart_backoff_s, metrics
        self.ctx = mp.get_context("spawn")
        self.slots: dict[int, _Slot] = {}
        self.restarts = 0
        self.ledger = CrashLedger(settings.kafka.quarantine_after_deaths)
        self._stopped_reading = threading.Event()
        self._stopping = threading.Event()
        self._reader = threading.Thread(target=self._read_reports, name="worker-reports", daemon=True)

    def start(self) -> None:
        for n in range(self.count):
            self._spawn(n)
        self._reader.start()

    def run(self, stopped: threading.Event) -> None:
        """Watch the workers until ``stopped`` is set, then stop them all (starts them if needed)."""
        if not self.slots:
            self.start()
        try:
            while not stopped.wait(0.5):
                self.reap()
        finally:
            self.shutdown()

    def reap(self) -> list[int]:
        """Restart every worker that exited; returns their slots."""
        dead = [n for n, s in self.slots.items() if not s.process.is_alive()]
        for n in dead:
            p = self.slots[n].process
            log.warning("worker %d (pid %s) exited with %s; restarting", n, p.pid, p.exitcode)
            self._count_death(self.slots[n])
            if self.metrics is not None:  # its partitions move; no lag left at its last figure
                self.metrics.reporter_gone(n)
            self.slots[n].orders.close()
            time.sleep(self.restart_backoff_s)  # back-off so a crash loop does not spin
            self._spawn(n)
            self.restarts += 1
        return dead

    def shutdown(self, timeout_s: float | None = None) -> None:
        """Ask every worker to stop (it finishes its micro-batch and flushes), kill any still
        running after ``timeout_s`` (default: a little over ``kafka.stop_timeout_ms``, after
        which a worker exits by itself); the workers' last reports are read before returning."""
        if timeout_s is None:
            timeout_s = worker_stop_s(self.settings.kafka)
        self._stopping.set()
        for s in self.slots.values():
            with contextlib.suppress(OSError):  # already dead
                s.orders.send(STOP)
        deadline = time.monotonic() + timeout_s
        for s in self.slots.values():
            s.process.join(max(0.1, deadline - time.monotonic()))
            if s.process.is_alive():
                log.error("worker pid %s did not stop in time; killing it", s.process.pid)
                s.process.kill()
                s.process.join(5)
            s.orders.close()
        self._stopped_reading.set()
        if self._reader.is_alive():
            self._reader.join(10)

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        """Block until every worker has been assigned partitions at least once (a worker that dies
        first is waited for again once :meth:`run` has restarted it)."""
        deadline = time.monotonic() + timeout_s
        while pending := [n for n, s in list(self.slots.items()) if not s.ready.is_set()]:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ComponentError(
                    "workers", f"worker(s) {pending} held no partitions after {timeout_s:.0f} s; see their log"
                )
            self.slots[pending[0]].ready.wait(min(left, 0.5))

    def readiness(self) -> dict[int, str]:
        """Each worker's state, for ``/ready``: ``ready`` (alive, and assigned partitions since it
        started), ``starting``, ``restarting`` (it exited; a new one replaces it) or ``stopping``."""
        slots = dict(self.slots)
        states = {}
        for n in range(self.count):
            slot = slots.get(n)
            if self._stopping.is_set():
                states[n] = "stopping"
            elif slot is None or (slot.process.is_alive() and not slot.ready.is_set()):
                states[n] = "starting"
            elif not slot.process.is_alive():
                states[n] = "restarting"
            else:
                states[n] = READY
        return states

    def pids(self) -> list[int]:
        return [s.process.pid for s in self.slots.values() if s.process.pid is not None and s.process.is_alive()]

    def _count_death(self, slot: _Slot) -> None:
        """A worker that died scoring a batch: its records become suspect, or get quarantined."""
        slot.gone.wait(2.0)  # its last reports are read first
        if not slot.in_flight:
            return
        for order in self.ledger.died(slot.in_flight):
            self._tell_all(order)

    def _tell_all(self, order: tuple[str, list[object]]) -> None:
        for s in self.slots.values():
            with contextlib.suppress(OSError):  # dead: it gets the standing orders when restarted
                s.orders.send(order)

    def _read_reports(self) -> None:
        """The one reader of every report pipe, until shutdown has joined the workers and their
        pipes are drained."""
        while True:
            open_ = {id(s.reports): s for s in list(self.slots.values()) if not s.reports.closed}
            if not open_ and self._stopped_reading.is_set():
                return
            readable = wait([s.reports for s in open_.values()], timeout=0.2) if open_ else []
            if not readable and self._stopped_reading.is_set():
                return
            for conn in readable:
                self._drain(open_[id(conn)])

    def _drain(self, slot: _Slot) -> None:
        try:
            while slot.reports.poll():
                message = slot.reports.recv()
                if message == ASSIGNED:
                    slot.ready.set()
                elif message[0] == IN_FLIGHT:
                    slot.in_flight = list(message[1])
                elif message[0] == DONE:
                    slot.in_flight = []
                elif self.metrics is not None:
                    apply(self.metrics, message, reporter=slot.number)
        except (EOFError, OSError):  # the worker is gone; reap restarts it with fresh pipes
            slot.reports.close()
            slot.gone.set()
        except Exception:  # a bad report must not stop the reader
            log.exception("reading a worker report failed")

    def _spawn(self, n: int) -> None:
        orders_r, orders_w = self.ctx.Pipe(duplex=False)
        reports_r, reports_w = self.ctx.Pipe(duplex=False)
        link = WorkerLink(orders_r, reports_w, relay_metrics=self.metrics is not None)
        # daemon: multiprocessing ends the workers when the supervisor exits, whatever the path
        p = self.ctx.Process(target=self.target, args=(self.settings, link), name=f"worker-{n}", daemon=True)
        p.start()
        orders_r.close()  # the child holds its own copies; ours would hide its end of file
        reports_w.close()
        self.slots[n] = _Slot(n, p, orders_w, reports_r)
        for order in self.ledger.standing_orders():
            orders_w.send(order)
