"""The supervisor's own HTTP endpoint for Kafka workers: ``/metrics``, ``/health`` and ``/ready``.

``lakeserve serve`` runs it beside its workers on ``metrics.host:metrics.port`` (on by default,
loopback), so a stream deployment has a Prometheus endpoint and a readiness probe without
``--http``. It serves the one :class:`~lakeserve.pipelines.metrics.ServiceMetrics` the workers
report into over their pipes (:mod:`lakeserve.pipelines.metrics_relay`); with ``--http`` the
REST server's ``/metrics`` reads that same registry, so both show the same series.

- ``GET /metrics``: the Prometheus text format;
- ``GET /health``: 200 ``{"status": "ok"}`` while the supervisor process answers (liveness);
- ``GET /ready``: 200 ``{"status": "ready", "workers": {...}}`` once every worker has been
  assigned partitions, else 503 ``{"status": "not ready", "workers": {...}}`` with each
  worker's state: ``starting``, ``restarting`` (it died and is being replaced), ``stopping``.

No access control (the REST server's guard protects data; this answers only counts and states):
keep it on loopback or a private network. Served by uvicorn in a thread of the supervisor.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from lakeserve.errors import ComponentError
from lakeserve.pipelines.metrics import ServiceMetrics
from lakeserve.pipelines.metrics_settings import MetricsSettings
from lakeserve.pipelines.stop_deadline import METRICS_STOP_S

log = logging.getLogger(__name__)

READY = "ready"
Readiness = Callable[[], Mapping[int, str]]  # worker slot -> state (``ready`` or why not)


def create_metrics_app(metrics: ServiceMetrics, readiness: Readiness) -> Starlette:
    async def exposition(request: Request) -> Response:
        content, content_type = metrics.exposition()
        return Response(content, headers={"content-type": content_type})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(request: Request) -> Response:
        workers = dict(readiness())
        ok = bool(workers) and all(state == READY for state in workers.values())
        body = {"status": "ready" if ok else "not ready", "workers": {str(n): s for n, s in sorted(workers.items())}}
        return JSONResponse(body, 200 if ok else 503)

    return Starlette(
        routes=[
            Route("/metrics", exposition, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/ready", ready, methods=["GET"]),
        ]
    )


class MetricsServer:
    """The endpoint on uvicorn in a background thread: :meth:`start` returns once it listens."""

    def __init__(
        self,
        settings: MetricsSettings,
        metrics: ServiceMetrics,
        readiness: Readiness,
        sock: socket.socket | None = None,
    ) -> None:
        self.settings, self._sock = settings, sock
        config = uvicorn.Config(
            create_metrics_app(metrics, readiness),
            host=settings.host,
            port=settings.port or 0,
            log_level="warning",
            access_log=False,
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=METRICS_STOP_S,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="metrics-server", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        if self._sock is not None:
            host, port = self._sock.getsockname()[:2]
            return str(host), int(port)
        return self.settings.host, int(self.settings.port or 0)

    def start(self, timeout_s: float = 30.0) -> None:
        """Listen, or raise :class:`ComponentError` (the port is taken, the host is not ours)."""
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            threading.Event().wait(0.05)  # polls the condition above
        if not self._server.started:
            self.stop()
            host, port = self.address
            raise ComponentError("metrics", f"cannot listen on {host}:{port} (metrics.host, metrics.port); see the log")
        log.info("metrics, health and readiness on http://%s:%s", *self.address)

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(10)

    def _run(self) -> None:
        try:
            self._server.run(sockets=[self._sock] if self._sock is not None else None)
        except SystemExit:  # uvicorn exits this way when it cannot bind; start() reports it
            log.error("the metrics endpoint could not start on %s:%s", *self.address)
