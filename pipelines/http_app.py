"""The REST adapter: MLflow-compatible invocations, health, readiness, metrics and the dashboard.

Routes (``{name}`` is ``endpoint.name``):

- ``POST /serving-endpoints/{name}/invocations``: an MLflow scoring body; answers
  ``{"predictions": [...]}`` with ``served-model-name`` and ``x-request-id`` headers, or
  ``{"error_code", "message", "request_id"}`` (and ``x-request-id``) with the error's status:
  400 bad body, 401/403 refused by the guard, 404 unknown endpoint or entity key, 413 over
  ``limits.max_request_bytes``, 429 ``REQUEST_LIMIT_EXCEEDED`` over the client's
  ``http.rate_limit`` (with ``Retry-After``), 500 ``MODEL_ERROR`` (a stable message; the
  exception is only in the log), 503 while loading, when a component fails, or with
  ``Retry-After`` when ``http.max_queued`` requests wait already, 504 past ``limits.timeout_s``
  (such a request is never scored). Every error answer is logged with its request id.
- ``GET /health`` (liveness, always open: 503 once a model call is stuck past
  ``limits.timeout_s``, so an orchestrator restarts the server) and ``GET /ready`` (200
  ``{"status": "ready"}`` once the models are loaded, else 503 ``{"status": "not ready"}``; the
  endpoint, served entities or the reason only to a caller who passes the guard);
- ``GET /metrics`` (Prometheus), ``GET /dashboard`` and ``GET /dashboard/data``.

Everything but ``/health`` and ``/ready`` passes the :class:`~lakeserve.pipelines.auth.AccessGuard`
before its body is read, then (invocations) the :class:`~lakeserve.pipelines.rate_limit.RateLimiter`.
The client address both use is the one uvicorn resolved: the TCP peer, or ``X-Forwarded-For``
from a peer in ``http.trusted_proxies``. The body is read as a stream and refused as soon as it
passes the cap (and at once when ``Content-Length`` announces more), so no more than the cap is
buffered. No answer carries a stack trace or an exception's text.
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

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from lakeserve.errors import (
    BadRequest,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ScoringError,
    ScoringTimeout,
    ServiceUnavailable,
)
from lakeserve.pipelines.auth import AccessGuard, Denied
from lakeserve.pipelines.http_batcher import MicroBatcher
from lakeserve.pipelines.metrics import ServiceMetrics
from lakeserve.pipelines.rate_limit import RateLimiter
from lakeserve.scoring.records import Origin, RequestResult, ScoringRequest
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


def create_app(
    endpoint: EndpointSettings,
    guard: AccessGuard,
    metrics: ServiceMetrics,
    loader: Loader,
    limiter: RateLimiter | None = None,
) -> Starlette:
    """The ASGI app. ``loader`` (blocking: loads models, opens the table) runs in a thread at startup."""
    state = _State()
    handlers = _Handlers(endpoint, guard, metrics, state, limiter)

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
    def __init__(
        self, endpoint: EndpointSettings, guard: AccessGuard, metrics: ServiceMetrics, state: _State,
        limiter: RateLimiter | None,
    ) -> None:  # fmt: skip
        self.endpoint, self.guard, self.metrics_, self.state, self.limiter = endpoint, guard, metrics, state, limiter
        self.limits = endpoint.limits

    async def invocations(self, request: Request) -> Response:
        started, request_id = time.perf_counter(), uuid.uuid4().hex
        try:
            self._admit(request)
            if request.path_params["name"] != self.endpoint.name:
                raise NotFound(f"endpoint {request.path_params['name']!r} does not exist")
            self._within_rate(request)
            scoring = self._scoring()
            body = await read_body(request, self.limits.max_request_bytes)
            scoring_request = ScoringRequest(request_id, body, datetime.now(UTC), Origin("http"))
            result = await self._submit(scoring.batcher, scoring_request)
        except _Refused as refused:
            denied = refused.denied
            self.metrics_.refused("http", denied.status_code, denied.error_code, 0.0)
            return answer_error(request_id, denied.status_code, denied.error_code, denied.message)
        except ScoringError as exc:
            self.metrics_.refused("http", exc.status_code, exc.error_code, time.perf_counter() - started)
            retry = getattr(exc, "retry_after_s", None)
            headers = {"retry-after": str(retry)} if retry is not None else None
            return answer_error(request_id, exc.status_code, exc.error_code, exc.message, headers)
        self.metrics_.answered("http", result, time.perf_counter() - started)
        return _scored_answer(request_id, result)

    async def health(self, request: Request) -> Response:
        """Liveness: 503 once a model call is stuck (only a restart frees its thread)."""
        scoring = self.state.scoring
        stalled = scoring.stalled() if scoring is not None else None
        if stalled is not None:
            log.error("unhealthy: %s", stalled)
            return error_response(503, "TEMPORARILY_UNAVAILABLE", "a model call is stuck; restart the server")
        return JSONResponse({"status": "ok"})

    async def ready(self, request: Request) -> Response:
        """``{"status"}`` to anyone; the endpoint, served entities or why not ready to a caller
        who passes the guard (anyone when access control is off)."""
        scoring = self.state.scoring
        trusted = self.guard.check(_client(request), request.headers) is None
        if scoring is None:
            why = "the served models failed to load" if self.state.failed else "the served models are loading"
            return JSONResponse({"status": "not ready", **({"reason": why} if trusted else {})}, 503)
        details = {"endpoint": self.endpoint.name, "served_entities": scoring.served} if trusted else {}
        return JSONResponse({"status": "ready", **details})

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

    async def _submit(self, batcher: MicroBatcher, scoring_request: ScoringRequest) -> RequestResult:
        try:
            return await asyncio.wait_for(batcher.submit(scoring_request), self.limits.timeout_s)
        except TimeoutError:
            raise ScoringTimeout(f"request not answered within {self.limits.timeout_s} s") from None

    def _admit(self, request: Request) -> None:
        denied = self.guard.check(_client(request), request.headers)
        if denied is not None:
            raise _Refused(denied)

    def _within_rate(self, request: Request) -> None:
        retry_after = self.limiter.admit(_client(request), request.headers) if self.limiter else None
        if retry_after is not None:
            raise RateLimited("request rate over the client's limit; retry later", retry_after)

    def _guarded(self, request: Request) -> Response | None:
        denied = self.guard.check(_client(request), request.headers)
        return None if denied is None else error_response(denied.status_code, denied.error_code, denied.message)

    def _scoring(self) -> Scoring:
        if self.state.scoring is None:
            raise ServiceUnavailable("the served models are not loaded yet")
        return self.state.scoring


def _scored_answer(request_id: str, result: RequestResult) -> Response:
    """The core's answer; an error one rebuilt with the request id (and logged under it)."""
    headers = {"x-request-id": request_id}
    if result.served_model_name:
        headers["served-model-name"] = result.served_model_name
    if not result.ok:
        code, message = result.error_code or "INTERNAL_ERROR", result.message or "error"
        return answer_error(request_id, result.status_code, code, message, headers)
    return Response(result.response_body, result.status_code, headers, media_type="application/json")


def _client(request: Request) -> str | None:
    """The client address uvicorn resolved (through ``http.trusted_proxies`` only)."""
    return request.client.host if request.client else None


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


def error_response(
    status: int, error_code: str, message: str, headers: dict[str, str] | None = None, request_id: str | None = None
) -> Response:
    fields = {"error_code": error_code, "message": message}
    headers = dict(headers or {})
    if request_id is not None:
        fields["request_id"] = headers["x-request-id"] = request_id
    if status == 401:
        headers["www-authenticate"] = "Bearer"
    return Response(json.dumps(fields).encode("utf-8"), status, headers, media_type="application/json")


def answer_error(
    request_id: str, status: int, error_code: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    """An error answer of an invocation, with its request id (body and header), logged under that id."""
    level = logging.WARNING if status >= 500 else logging.INFO
    log.log(level, "request %s answered %d %s: %s", request_id, status, error_code, message)
    return error_response(status, error_code, message, headers, request_id)


_CODES = {404: "RESOURCE_DOES_NOT_EXIST", 405: "BAD_REQUEST"}


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    code, message = _CODES.get(status, "BAD_REQUEST"), str(getattr(exc, "detail", "error"))
    return error_response(status, code, message, request_id=uuid.uuid4().hex)


async def _internal_error(request: Request, exc: Exception) -> Response:
    request_id = uuid.uuid4().hex
    log.error("request %s: unhandled error on %s %s", request_id, request.method, request.url.path, exc_info=exc)
    return error_response(500, "INTERNAL_ERROR", "internal error", request_id=request_id)
