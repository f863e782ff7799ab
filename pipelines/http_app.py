"""The REST adapter: MLflow-compatible invocations, health, readiness, metrics and the dashboard.

Routes (``{name}`` is ``endpoint.name``):

- ``POST /serving-endpoints/{name}/invocations``: an MLflow scoring body; answers
  ``{"predictions": [...]}`` with a ``served-model-name`` header, or ``{"error_code", "message"}``
  with the error's status (400 bad body, 404 unknown endpoint, 413 over
  ``limits.max_request_bytes``, 504 past ``limits.timeout_s``, 503 while loading or when a
  component fails);
- ``GET /health`` (liveness, always open: 503 once a model call is stuck past
  ``limits.timeout_s``, so an orchestrator restarts the server) and ``GET /ready`` (200 once the
  models are loaded);
- ``GET /metrics`` (Prometheus), ``GET /dashboard`` and ``GET /dashboard/data``.

Everything but ``/health`` and ``/ready`` passes the :class:`~lakeserve.pipelines.auth.AccessGuard`
before its body is read. The body is read as a stream and refused as soon as it passes the
cap (and at once when ``Content-Length`` announces more), so no more than the cap is buffered.
No answer carries a stack trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.resources import files
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from lakeserve.errors import BadRequest, NotFound, PayloadTooLarge, ScoringError, ScoringTimeout, ServiceUnavailable
from lakeserve.pipelines.auth import AccessGuard, Denied
from lakeserve.pipelines.http_batcher import MicroBatcher
from lakeserve.pipelines.metrics import ServiceMetrics
from lakeserve.scoring.records import Origin, ScoringRequest
from lakeserve.scoring.settings import EndpointSettings

log = logging.getLogger(__name__)


@dataclass
class Scoring:
    """What answers invocations once loaded: the batcher and what to call on shutdown."""

    batcher: MicroBatcher
    served: dict[str, str]  # served entity -> model_name/version, for /ready
    close: Callable[[], None]  # stop the table flusher (flushes), unload models
    stalled: Callable[[], str | None] = lambda: None  # why the server must be restarted, if it must


Loader = Callable[[], Scoring]  # blocking: loads the models and opens the table


class _State:
    """The app's mutable state: the scoring parts once loaded, or why loading failed."""

    def __init__(self) -> None:
        self.scoring: Scoring | None = None
        self.failed = False


def create_app(endpoint: EndpointSettings, guard: AccessGuard, metrics: ServiceMetrics, loader: Loader) -> Starlette:
    """The ASGI app. ``loader`` (blocking: loads models, opens the table) runs in a thread at startup."""
    state = _State()
    handlers = _Handlers(endpoint, guard, metrics, state)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = asyncio.get_running_loop().create_task(_load(loader, state))
        try:
            yield
        finally:
            await _shutdown(task, state)

    routes = [
        Route("/serving-endpoints/{name}/invocations", handlers.invocations, methods=["POST"]),
        Route("/health", handlers.health, methods=["GET"]),
        Route("/ready", handlers.ready, methods=["GET"]),
        Route("/metrics", handlers.metrics, methods=["GET"]),
        Route("/dashboard", handlers.dashboard, methods=["GET"]),
        Route("/dashboard/data", handlers.dashboard_data, methods=["GET"]),
    ]
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
    )


async def _load(loader: Loader, state: _State) -> None:
    try:
        scoring = await asyncio.to_thread(loader)
    except Exception:
        state.failed = True
        log.exception("loading the served models failed; /ready answers 503")
        return
    scoring.batcher.start()
    state.scoring = scoring
    log.info("HTTP endpoint ready, serving %s", scoring.served)


async def _shutdown(task: asyncio.Task[None], state: _State) -> None:
    await task  # a load in progress finishes before its parts are stopped
    if state.scoring is not None:
        await state.scoring.batcher.stop()
        await asyncio.to_thread(state.scoring.close)


class _Handlers:
    def __init__(self, endpoint: EndpointSettings, guard: AccessGuard, metrics: ServiceMetrics, state: _State):
        self.endpoint, self.guard, self.metrics_, self.state = endpoint, guard, metrics, state
        self.limits = endpoint.limits

    async def invocations(self, request: Request) -> Response:
        started = time.perf_counter()
        try:
            self._admit(request)
            if request.path_params["name"] != self.endpoint.name:
                raise NotFound(f"endpoint {request.path_params['name']!r} does not exist")
            scoring = self._scoring()
            body = await read_body(request, self.limits.max_request_bytes)
            scoring_request = ScoringRequest(uuid.uuid4().hex, body, datetime.now(UTC), Origin("http"))
            result = await self._submit(scoring.batcher, scoring_request)
        except _Refused as refused:
            self.metrics_.refused("http", refused.denied.status_code, refused.denied.error_code, 0.0)
            return error_response(refused.denied.status_code, refused.denied.error_code, refused.denied.message)
        except ScoringError as exc:
            self.metrics_.refused("http", exc.status_code, exc.error_code, time.perf_counter() - started)
            return error_response(exc.status_code, exc.error_code, exc.message)
        self.metrics_.answered("http", result, time.perf_counter() - started)
        headers = {"x-request-id": scoring_request.request_id}
        if result.served_model_name:
            headers["served-model-name"] = result.served_model_name
        return Response(result.response_body, result.status_code, headers, media_type="application/json")

    async def health(self, request: Request) -> Response:
        """Liveness: 503 once a model call is stuck (only a restart frees its thread)."""
        scoring = self.state.scoring
        stalled = scoring.stalled() if scoring is not None else None
        if stalled is not None:
            log.error("unhealthy: %s", stalled)
            return error_response(503, "TEMPORARILY_UNAVAILABLE", "a model call is stuck; restart the server")
        return JSONResponse({"status": "ok"})

    async def ready(self, request: Request) -> Response:
        scoring = self.state.scoring
        if scoring is None:
            why = "the served models failed to load" if self.state.failed else "the served models are loading"
            return error_response(503, "TEMPORARILY_UNAVAILABLE", why)
        return JSONResponse({"status": "ready", "endpoint": self.endpoint.name, "served_entities": scoring.served})

    async def metrics(self, request: Request) -> Response:
        denied = self._guarded(request)
        if denied is not None:
            return denied
        content, content_type = self.metrics_.exposition()
        return Response(content, headers={"content-type": content_type})

    async def dashboard(self, request: Request) -> Response:
        return self._guarded(request) or HTMLResponse(dashboard_page())

    async def dashboard_data(self, request: Request) -> Response:
        return self._guarded(request) or JSONResponse(self.metrics_.dashboard())

    async def _submit(self, batcher: MicroBatcher, scoring_request: ScoringRequest) -> Any:
        try:
            return await asyncio.wait_for(batcher.submit(scoring_request), self.limits.timeout_s)
        except TimeoutError:
            raise ScoringTimeout(f"request not answered within {self.limits.timeout_s} s") from None

    def _admit(self, request: Request) -> None:
        denied = self.guard.check(request.client.host if request.client else None, request.headers)
        if denied is not None:
            raise _Refused(denied)

    def _guarded(self, request: Request) -> Response | None:
        denied = self.guard.check(request.client.host if request.client else None, request.headers)
        return None if denied is None else error_response(denied.status_code, denied.error_code, denied.message)

    def _scoring(self) -> Scoring:
        if self.state.scoring is None:
            raise ServiceUnavailable("the served models are not loaded yet")
        return self.state.scoring


class _Refused(Exception):
    def __init__(self, denied: Denied) -> None:
        super().__init__(denied.error_code)
        self.denied = denied


async def read_body(request: Request, cap: int) -> bytes:
    """The body, refused with 413 once it passes ``cap`` bytes (announced or streamed)."""
    announced = request.headers.get("content-length")
    if announced is not None:
        if not announced.isdigit():
            raise BadRequest("Content-Length is not a number")
        if int(announced) > cap:
            raise PayloadTooLarge(f"request is {announced} bytes, over the limit of {cap} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise PayloadTooLarge(f"request is over the limit of {cap} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def dashboard_page() -> str:
    return files("lakeserve.pipelines").joinpath("dashboard.html").read_text(encoding="utf-8")


def error_response(status: int, error_code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps({"error_code": error_code, "message": message}).encode("utf-8")
    if status == 401:
        headers = {**(headers or {}), "www-authenticate": "Bearer"}
    return Response(body, status, headers, media_type="application/json")


_CODES = {404: "RESOURCE_DOES_NOT_EXIST", 405: "BAD_REQUEST"}


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    return error_response(status, _CODES.get(status, "BAD_REQUEST"), str(getattr(exc, "detail", "error")))


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s: %s", request.method, request.url.path, type(exc).__name__)
    return error_response(500, "INTERNAL_ERROR", "internal error")
