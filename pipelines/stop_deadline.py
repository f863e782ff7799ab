"""How long ``lakeserve serve`` may take to stop, and the deadline that holds it to that bound.

On SIGTERM (Kubernetes, systemd) or Ctrl-C the service stops like this (``lakeserve/cli.py``,
``_serve``), the Kafka side and the REST side at the same time:

1. the supervisor tells every Kafka worker to stop: each finishes its micro-batch, appends its
   rows to Delta, commits its offsets and leaves the group. A worker that has not finished
   within ``kafka.stop_timeout_ms`` exits anyway (its uncommitted records are replayed by the
   next owner of its partitions); the supervisor kills one still alive :data:`KILL_MARGIN_S`
   later. Then the workers' metrics endpoint closes, within :data:`METRICS_STOP_S`.
2. the REST server (``--http``) stops accepting connections and lets the requests in flight
   finish, for at most :func:`rest_drain_s` (each is answered within ``limits.timeout_s``, 504
   past it); then it appends its last rows, allowed ``kafka.stop_timeout_ms`` (the allowance a
   worker gets for its last append and commit).

:func:`serve_stop_timeout_s` is the longer of the two sides, plus :data:`PROCESS_MARGIN_S`;
:func:`exit_when_stop_hangs` ends the process once that much time has passed since the stop
(what was not appended by then: Kafka records are replayed by the next owner, REST rows are lost,
as REST logging is at most once). A deployment's grace period before it kills the process
(Kubernetes ``terminationGracePeriodSeconds``) must be at least this bound.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
from collections.abc import Callable

from lakeserve.pipelines.kafka_settings import KafkaSettings
from lakeserve.pipelines.settings import ServiceSettings
from lakeserve.scoring.settings import Limits

log = logging.getLogger(__name__)

KILL_MARGIN_S = 1.0  # after kafka.stop_timeout_ms, the supervisor kills a worker still alive
METRICS_STOP_S = 5  # the workers' metrics endpoint: uvicorn's graceful shutdown
PROCESS_MARGIN_S = 2.0  # the supervisor's own last steps: reading the workers' last reports, logging


def worker_stop_s(kafka: KafkaSettings) -> float:
    """The longest a stopping Kafka worker runs: its own deadline, then the supervisor's kill."""
    return kafka.stop_timeout_ms / 1000 + KILL_MARGIN_S


def rest_drain_s(limits: Limits) -> int:
    """How long a stopping REST server waits for the requests in flight (uvicorn's graceful
    shutdown, in whole seconds): each is answered, or 504, within ``limits.timeout_s``."""
    return math.ceil(limits.timeout_s)


def serve_stop_timeout_s(settings: ServiceSettings, workers: int, http: bool) -> float:
    """The bound on ``lakeserve serve --workers {workers} [--http]`` stopping (module docstring)."""
    sides = []
    if workers > 0:
        sides.append(worker_stop_s(settings.kafka) + METRICS_STOP_S)
    if http:
        sides.append(rest_drain_s(settings.endpoint.limits) + settings.kafka.stop_timeout_ms / 1000)
    return max(sides, default=0.0) + PROCESS_MARGIN_S


def hard_exit(code: int) -> None:
    """End the process now, logs and output flushed first: no thread (a model call stuck in one,
    a non-daemon server thread) can keep it alive."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def exit_when_stop_hangs(
    stop: threading.Event,
    timeout_s: float,
    what: str,
    on_expiry: Callable[[], None] = lambda: hard_exit(1),
) -> threading.Thread:
    """Start a daemon thread that, ``timeout_s`` after ``stop`` is set, logs that ``what`` did not
    stop in time and calls ``on_expiry`` (by default: exit the process with status 1)."""

    def watch() -> None:
        stop.wait()
        if not threading.Event().wait(timeout_s):  # the deadline itself, not a readiness wait
            log.error("%s did not stop within %g s; exiting without what it had not finished", what, timeout_s)
            on_expiry()

    thread = threading.Thread(target=watch, name="stop-deadline", daemon=True)
    thread.start()
    return thread
