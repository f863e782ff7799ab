"""The transport-free scoring core: a micro-batch of requests in, one result per request out.

``ScoringCore.score(requests)`` runs, for the whole micro-batch:

1. parse every body (:func:`lakeserve.scoring.requests.parse`); a bad body becomes an error
   result carrying one error record (so the inference table logs it), never an exception;
2. route every record (:class:`~lakeserve.scoring.routing.Router`), sticky by
   ``traffic_config.sticky_key`` or else the entity key the served models record; a record
   without that field routes by its request id. The shadow entity gets a copy of each record
   it does not already answer (``shadow=True``: scored and logged, never answered);
3. look features up: ONE ``FeatureLookup.get`` per feature service for the whole batch
   (distinct keys only). A record missing its entity key is ``INVALID_PARAMETER_VALUE`` (400);
   a key the store does not know is ``RESOURCE_DOES_NOT_EXIST`` (404);
4. assemble each record's model input: the looked-up features, then the request's fields on
   top. **A request field with the same name as a feature overrides the looked-up value**
   (Databricks Feature Serving's rule) when the request gives a non-null value for it; a
   null or absent field leaves the looked-up value. The input is checked against the model's
   signature (:func:`~lakeserve.scoring.models.conform`): a bad record is a 400 of its own;
5. ONE ``predict`` per served entity and distinct ``params`` over all its records. Each
   request's params are checked against the model's params schema
   (:meth:`~lakeserve.scoring.models.ServedModel.check_params`): an undeclared or wrongly
   typed param is ``INVALID_PARAMETER_VALUE`` (400) for that request's records only (a shadow
   that refuses the params fails only its copies; the answer stands). The other
   records are grouped by their request's checked params (as canonical JSON), and each group
   is predicted with its params, so requests with different params never share a call. If the
   model raises, the group is split in halves and retried down to single records, so only the
   records the model cannot score fail (``MODEL_ERROR``, 500) and the rest of the batch is
   answered. Records past ``limits.timeout_s`` since ``received_at`` are ``TIMEOUT`` (504),
   checked before and after the model;
6. answer: ``{"predictions": [...]}`` (a scalar per record for one output, an object per
   record for several) when every answered record succeeded. Otherwise the request answers
   with its first failing record's status and ``{"error_code", "message"}``, as MLflow's
   scoring server fails a whole request; every record keeps its own status for the log. An
   answer over ``limits.max_response_bytes`` becomes ``MAX_RESPONSE_SIZE_EXCEEDED`` (500).

Failures of a real component (Feast down: ``ComponentError``) are not bad input: they raise
out of :meth:`ScoringCore.score`, so the pipeline does not commit the batch and retries it.

The models and the traffic split live in one immutable :class:`RoutingTable`; :meth:`swap`
replaces it atomically (one reference assignment). A batch reads the table once, so it is
scored entirely by the old or entirely by the new table, never by a mix.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any, Protocol

import pandas as pd

from lakeserve.errors import (
    BadRequest,
    ComponentError,
    ConfigError,
    InvalidInput,
    ModelError,
    NotFound,
    ResponseTooLarge,
    ScoringError,
    ScoringTimeout,
)
from lakeserve.features.lookup import PRIVATE_KEY, FeatureLookup, key_checker, normalize_key
from lakeserve.scoring.models import PREDICTION, ServedModel, conform, predict_isolating
from lakeserve.scoring.records import RecordResult, RequestResult, ScoringRequest, Timings, json_value
from lakeserve.scoring.requests import ParsedRequest, parse
from lakeserve.scoring.routing import Router, key_string
from lakeserve.scoring.settings import EndpointSettings

log = logging.getLogger(__name__)

WallClock = Callable[[], datetime]  # timezone-aware UTC now


def utc_now() -> datetime:
    return datetime.now(UTC)


class Scorer(Protocol):
    """What the transports call: the core, or anything that scores like it."""

    def score(
        self, requests: Sequence[ScoringRequest], parsed: Sequence[ParsedRequest] | None = None
    ) -> list[RequestResult]:
        """One result per request, in order; raises only ComponentError (a real part failed)."""
        ...

    def refuse(self, requests: Sequence[ScoringRequest], error: ScoringError) -> list[RequestResult]:
        """Every request answered with ``error`` without scoring it (a component is down)."""
        ...

    def stalled(self) -> str | None:
        """Why the scorer cannot go on (a model call that never returned), or None."""
        ...


@dataclass(frozen=True, slots=True)
class RoutingTable:
    """What a batch is scored with: the endpoint config, its loaded models and its router."""

    endpoint: EndpointSettings
    models: Mapping[str, ServedModel]
    router: Router
    sticky_key: str | None

    @classmethod
    def build(
        cls, endpoint: EndpointSettings, models: Mapping[str, ServedModel], lookup: FeatureLookup
    ) -> RoutingTable:
        """Check that every routed (and shadow) entity is loaded and its feature service known."""
        wanted = [r.served_model_name for r in endpoint.traffic_config.routes]
        wanted += (
            [endpoint.traffic_config.shadow_model_name] if endpoint.traffic_config.shadow_model_name else []
        )
        missing = sorted(set(wanted) - set(models))
        if missing:
            raise ConfigError(f"endpoint {endpoint.name!r}: no loaded model for served entities {missing}")
        for model in models.values():
            if model.feature_service is not None:
                lookup.entity_keys(model.feature_service)  # ConfigError now, not mid-stream
        sticky = endpoint.traffic_config.sticky_key or _entity_key(models, wanted)
        return cls(endpoint, MappingProxyType(dict(models)), Router(endpoint.traffic_config), sticky)


def _entity_key(models: Mapping[str, ServedModel], names: Sequence[str]) -> str | None:
    for name in names:
        if models[name].entity_keys:
            return models[name].entity_keys[0]
    return None


@dataclass(slots=True)
class _Item:
    """One record on its way to one served entity (an answered record or a shadow copy)."""

    request: int  # position of its request in the batch
    request_id: str
    fields: dict[str, Any]
    params: Mapping[str, Any]  # its request's params, as sent
    record: RecordResult
    deadline: datetime
    done: bool = False

    def fail(self, error: ScoringError) -> None:
        self.record.status_code, self.record.error_code = error.status_code, error.error_code
        self.record.message = error.message
        self.done = True


@dataclass(slots=True)
class _BatchTimes:
    parse_ms: list[float] = field(default_factory=list)
    features_ms: float = 0.0
    model_ms: dict[str, float] = field(default_factory=dict)


class ScoringCore:
    """Scores micro-batches of requests with the current :class:`RoutingTable`."""

    def __init__(
        self,
        endpoint: EndpointSettings,
        models: Mapping[str, ServedModel],
        lookup: FeatureLookup,
        clock: WallClock = utc_now,
    ) -> None:
        self._lookup = lookup
        self._clock = clock
        self._table = RoutingTable.build(endpoint, models, lookup)
        self._calls: dict[int, _ModelCall] = {}  # by id() of the served model

    @property
    def table(self) -> RoutingTable:
        return self._table

    def swap(
        self, models: Mapping[str, ServedModel], endpoint: EndpointSettings | None = None
    ) -> RoutingTable:
        """Replace the models (and optionally the endpoint config) at once; returns the old table.

        The new table is checked before it replaces the old one, so a bad update raises
        ConfigError and leaves the old table serving. The caller unloads the old models.
        """
        new = RoutingTable.build(endpoint or self._table.endpoint, models, self._lookup)
        old, self._table = self._table, new
        return old

    def score(
        self, requests: Sequence[ScoringRequest], parsed: Sequence[ParsedRequest] | None = None
    ) -> list[RequestResult]:
        """One result per request. Only a failing component raises (ComponentError); a bug met by
        one request costs that request a 500 ``INTERNAL_ERROR``, the others are scored alone.

        ``parsed``: the requests' records as the transport already holds them (the batch job's
        rows), instead of bodies to parse."""
        try:
            return self._score(requests, parsed)
        except ComponentError:
            raise
        except Exception:
            log.exception("scoring a batch of %d requests failed; scoring them one by one", len(requests))
        results = []
        for i, request in enumerate(requests):
            try:
                results += self._score([request], None if parsed is None else [parsed[i]])
            except ComponentError:
                raise
            except Exception:
                log.exception("request %s cannot be scored", request.request_id)
                results += self.refuse([request], ScoringError(f"internal error (request {request.request_id})"))
        return results

    def refuse(self, requests: Sequence[ScoringRequest], error: ScoringError) -> list[RequestResult]:
        now = self._clock()
        return [
            _failed(r, None, [RecordResult(0, error.status_code, error.error_code, error.message)], error,
                    Timings(total_ms=(now - r.received_at).total_seconds() * 1000))
            for r in requests
        ]  # fmt: skip

    def stalled(self) -> str | None:
        limit = self._table.endpoint.limits.timeout_s
        for call in self._calls.values():
            if call.running_for() > limit:
                return f"a predict call of served entity {call.model.name!r} has run for more than {limit} s"
        return None

    def _score(
        self, requests: Sequence[ScoringRequest], given: Sequence[ParsedRequest] | None
    ) -> list[RequestResult]:
        table = self._table  # one snapshot for the whole batch
        times = _BatchTimes()
        parsed: list[ParsedRequest | ScoringError]
        if given is None:
            parsed = [self._parse(r, times) for r in requests]
        else:
            parsed, times.parse_ms = list(given), [0.0] * len(given)
        items = self._route(requests, parsed, table)
        times.features_ms = self._add_features(items, table)
        for name, model in table.models.items():
            todo = [it for it in items if it.record.served_entity == name and not it.done]
            if todo:
                times.model_ms[name] = self._predict(model, todo)
        by_request: dict[int, list[_Item]] = defaultdict(list)
        for it in items:
            by_request[it.request].append(it)
        return [
            _capped(_result(req, parsed[i], [it.record for it in by_request[i]], times, i, self._clock()),
                    table.endpoint.limits.max_response_bytes)
            for i, req in enumerate(requests)
        ]

    def _parse(self, request: ScoringRequest, times: _BatchTimes) -> ParsedRequest | ScoringError:
        start = time.perf_counter()
        parsed: ParsedRequest | ScoringError
        if request.defect is not None:
            parsed = BadRequest(request.defect)
        else:
            parsed = parse(request.body, self._table.endpoint.limits.max_request_bytes)
        times.parse_ms.append((time.perf_counter() - start) * 1000)
        return parsed

    def _route(
        self,
        requests: Sequence[ScoringRequest],
        parsed: Sequence[ParsedRequest | ScoringError],
        table: RoutingTable,
    ) -> list[_Item]:
        items: list[_Item] = []
        timeout = timedelta(seconds=table.endpoint.limits.timeout_s)
        for pos, (request, p) in enumerate(zip(requests, parsed, strict=True)):
            if isinstance(p, ScoringError):
                continue
            rows = _rows(p.records)
            keys = [_sticky(row, table.sticky_key) or request.request_id for row in rows]
            entities = table.router.assign(keys)
            for index, (row, entity) in enumerate(zip(rows, entities, strict=True)):
                deadline = request.received_at + timeout
                for name, shadow in _copies(entity, table.router):
                    record = _new_record(index, table.models[name], row, shadow)
                    items.append(_Item(pos, request.request_id, row, p.params, record, deadline))
        return items

    def _add_features(self, items: list[_Item], table: RoutingTable) -> float:
        start = time.perf_counter()
        by_service: dict[str, list[_Item]] = defaultdict(list)
        for it in items:
            service = table.models[str(it.record.served_entity)].feature_service
            if service is not None and not it.done:
                by_service[service].append(it)
        for service, group in by_service.items():
            self._lookup_service(service, group)
        return (time.perf_counter() - start) * 1000

    def _lookup_service(self, service: str, group: list[_Item]) -> None:
        join_keys = self._lookup.entity_keys(service)
        types = self._lookup.key_types(service)
        checks = [key_checker(types.get(k)) for k in join_keys]
        ready: list[tuple[_Item, tuple[Hashable | None, ...]]] = []
        for it in group:
            sent = [it.fields.get(k) for k in join_keys]
            key = tuple(normalize_key(v) for v in sent)
            error = _key_error(service, join_keys, sent, key, checks)
            if error is not None:
                it.fail(error)
            else:
                ready.append((it, key))
        if not ready:
            return
        distinct = list(dict.fromkeys(key for _, key in ready))
        result = self._lookup.get(service, pd.DataFrame(distinct, columns=join_keys))
        feature_rows = _plain_rows(result.features)
        where = {k: i for i, k in enumerate(distinct)}
        for it, key in ready:
            if result.found[where[key]]:
                it.record.features = feature_rows[where[key]]
            else:
                it.fail(NotFound(f"no features in {service!r} for {_describe(join_keys, key)}"))

    def _predict(self, model: ServedModel, todo: list[_Item]) -> float:
        """Every group of ``todo`` with the same params predicted in one call; the model's time."""
        return sum(self._predict_group(model, group, params) for params, group in _by_params(model, todo))

    def _predict_group(self, model: ServedModel, todo: list[_Item], params: Mapping[str, Any]) -> float:
        self._expire(todo)
        todo = [it for it in todo if not it.done]
        if not todo:
            return 0.0
        frame = pd.DataFrame([it.record.model_input() for it in todo])
        conformed = conform(frame, model.input_schema)
        for it, error in zip(todo, conformed.errors, strict=True):
            if error is not None:
                it.fail(error)
        ok = [i for i, e in enumerate(conformed.errors) if e is None]
        if not ok:
            return 0.0
        start = time.perf_counter()
        try:
            out, failures = self._call(model).run(conformed.frame, params, self._wait_s([todo[i] for i in ok]))
        except TimeoutError:
            late = ScoringTimeout(f"the model did not answer within {self._table.endpoint.limits.timeout_s} s")
            for i in ok:
                todo[i].fail(late)
            return (time.perf_counter() - start) * 1000
        elapsed = (time.perf_counter() - start) * 1000
        for i, prediction, failure in zip(ok, _predictions(out, len(ok)), failures, strict=True):
            if failure is not None:
                log.error("request %s record %d: served entity %r failed: %s",
                          todo[i].request_id, todo[i].record.record_index, model.name, failure.detail)  # fmt: skip
                todo[i].fail(failure)
            else:
                todo[i].record.prediction, todo[i].record.execution_time_ms = prediction, elapsed
        self._expire([todo[i] for i in ok])
        return elapsed

    def _wait_s(self, items: list[_Item]) -> float:
        """How long the model may take: until the last of these records' deadlines."""
        return max(0.0, (max(it.deadline for it in items) - self._clock()).total_seconds())

    def _call(self, model: ServedModel) -> _ModelCall:
        call = self._calls.get(id(model))
        if call is None or call.model is not model:
            live = {id(m) for m in self._table.models.values()}
            self._calls = {k: c for k, c in self._calls.items() if k in live}
            call = self._calls[id(model)] = _ModelCall(model)
        return call

    def _expire(self, items: list[_Item]) -> None:
        now = self._clock()
        for it in items:
            if not it.done and now > it.deadline:
                it.record.prediction = None
                it.fail(ScoringTimeout(f"record not scored within {self._table.endpoint.limits.timeout_s} s"))


class _ModelCall:
    """One served model's predict calls, run on a thread of their own so that the core can stop
    waiting for a call that takes too long. A call that never returns cannot be killed (it is a
    thread): :meth:`ScoringCore.stalled` says so, and the worker that owns the core is replaced."""

    def __init__(self, model: ServedModel) -> None:
        self.model = model
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"predict-{model.name}")
        self._running: Future[tuple[pd.DataFrame, list[ModelError | None]]] | None = None
        self._started = 0.0
        self._lock = threading.Lock()

    def run(
        self, frame: pd.DataFrame, params: Mapping[str, Any], timeout_s: float
    ) -> tuple[pd.DataFrame, list[ModelError | None]]:
        """``predict_isolating(model, frame, params)``, or TimeoutError once ``timeout_s`` passed
        (waiting for an earlier call that is still running counts)."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            earlier = self._running
            if earlier is not None and not earlier.done():
                wait(earlier, timeout_s)
            self._running = self._executor.submit(predict_isolating, self.model, frame, params)
            self._started = time.monotonic()
            running = self._running
        return running.result(timeout=max(0.0, deadline - time.monotonic()))

    def running_for(self) -> float:
        """Seconds the current call has been running; 0 when none runs."""
        running = self._running
        return 0.0 if running is None or running.done() else time.monotonic() - self._started


def wait(future: Future[Any], timeout_s: float) -> None:
    """Wait for ``future`` to finish; TimeoutError if it does not in time (its outcome is ignored)."""
    done, _ = futures_wait([future], timeout=timeout_s)
    if not done:
        raise TimeoutError("an earlier predict call has not returned")


def _by_params(model: ServedModel, items: list[_Item]) -> list[tuple[dict[str, Any], list[_Item]]]:
    """``items`` grouped by their request's params as ``model`` checked them (once per params
    object: the batch job gives every row the same one); the items of a request whose params the
    model refuses fail with that error (400)."""
    checked: dict[int, dict[str, Any] | InvalidInput] = {}  # by id() of the params as sent
    groups: dict[str, tuple[dict[str, Any], list[_Item]]] = {}
    for it in items:
        sent = id(it.params)  # the items hold their params: no id is reused during the call
        if sent not in checked:
            try:
                checked[sent] = model.check_params(it.params)
            except InvalidInput as exc:
                checked[sent] = exc
        params = checked[sent]
        if isinstance(params, InvalidInput):
            it.fail(params)
            continue
        key = json.dumps(params, sort_keys=True, default=str)
        groups.setdefault(key, (params, []))[1].append(it)
    return list(groups.values())


def _copies(entity: str, router: Router) -> list[tuple[str, bool]]:
    """The answered copy of a record, plus the shadow copy unless the shadow already answers it."""
    if router.shadow is not None and router.shadows([entity])[0]:
        return [(entity, False), (router.shadow, True)]
    return [(entity, False)]


def _new_record(index: int, model: ServedModel, row: dict[str, Any], shadow: bool) -> RecordResult:
    return RecordResult(
        record_index=index,
        served_entity=model.name,
        model_name=model.model_name,
        model_version=model.model_version,
        device=model.device,
        shadow=shadow,
        inputs=dict(row),
    )


def _rows(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The parsed records as fresh dicts, nulls (NaN included) as None."""
    return [{k: None if _null(v) else v for k, v in row.items()} for row in records]


def _plain_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    if frame.shape[1] == 0:  # a service of keys only: pandas gives no records at all for it
        return [{} for _ in range(len(frame))]
    return [{str(k): v for k, v in row.items()} for row in frame.to_dict("records")]


def _sticky(row: Mapping[str, Any], field_name: str | None) -> str | None:
    return key_string(row.get(field_name)) if field_name is not None else None


_PRESENT = frozenset({str, int, bool, list, dict})  # JSON types that are never null


def _null(value: Any) -> bool:
    """None, NaN, NaT or NA; decided without pandas for the JSON decoder's own types."""
    kind = type(value)
    if kind in _PRESENT:
        return False
    if value is None:
        return True
    if kind is float:
        return bool(value != value)
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # arrays and other containers: present values
        return False


def _key_error(
    service: str,
    join_keys: Sequence[str],
    sent: Sequence[Any],
    key: tuple[Hashable | None, ...],
    checks: Sequence[Callable[[Any], str | None]],
) -> InvalidInput | None:
    """A record's entity key that is absent, or not a value of its type: 400 for that record.
    ``sent`` are the values as the request gave them (a list stays a list), ``key`` normalized,
    ``checks`` the :func:`~lakeserve.features.lookup.key_checker` of each join key's type."""
    absent = [k for k, v in zip(join_keys, key, strict=True) if v is None]
    if absent:
        return InvalidInput(f"record lacks entity key {absent} needed by feature service {service!r}")
    for name, value, check in zip(join_keys, sent, checks, strict=True):
        problem = check(value)
        if problem is not None:
            return InvalidInput(f"entity key {name!r} {problem}")
    return None


def _describe(join_keys: Sequence[str], key: tuple[Hashable | None, ...]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in zip(join_keys, key, strict=True) if not k.startswith(PRIVATE_KEY))


def _predictions(out: pd.DataFrame, rows: int) -> list[Any]:
    if len(out) != rows:
        raise ValueError(f"model returned {len(out)} predictions for {rows} rows")
    if out.shape[1] == 0:  # every row failed: nothing to answer
        return [None] * rows
    values = _plain_rows(out.reset_index(drop=True))
    if out.shape[1] == 1:
        column = PREDICTION if PREDICTION in out.columns else str(out.columns[0])
        return [json_value(v[column]) for v in values]
    return [{k: json_value(v) for k, v in row.items()} for row in values]


def _result(
    request: ScoringRequest,
    parsed: ParsedRequest | ScoringError,
    records: list[RecordResult],
    times: _BatchTimes,
    pos: int,
    now: datetime,
) -> RequestResult:
    timings = Timings(
        parse_ms=times.parse_ms[pos], total_ms=(now - request.received_at).total_seconds() * 1000
    )
    if isinstance(parsed, ScoringError):
        record = RecordResult(0, parsed.status_code, parsed.error_code, parsed.message)
        return _failed(request, None, [record], parsed, timings)
    timings.features_ms = times.features_ms if any(r.features for r in records) else 0.0
    timings.model_ms = max((times.model_ms.get(str(r.served_entity), 0.0) for r in records), default=0.0)
    answered = [r for r in records if not r.shadow]
    ordered = answered + [r for r in records if r.shadow]
    failed = next((r for r in answered if not r.ok), None)
    served = ",".join(dict.fromkeys(str(r.served_entity) for r in answered if r.ok)) or None
    if failed is not None:
        body = _json({"error_code": failed.error_code, "message": failed.message})
        return RequestResult(
            request, failed.status_code, body, ordered, parsed.client_request_id,
            failed.error_code, failed.message, served, timings,
        )  # fmt: skip
    body = _json({"predictions": [r.prediction for r in answered]})
    return RequestResult(request, 200, body, ordered, parsed.client_request_id, None, None, served, timings)


def _capped(result: RequestResult, max_bytes: int) -> RequestResult:
    """An answer over ``limits.max_response_bytes`` is replaced by a ``MAX_RESPONSE_SIZE_EXCEEDED`` (500)
    answer; its records keep their predictions for the log and take the error's status."""
    if len(result.response_body) <= max_bytes:
        return result
    error = ResponseTooLarge(
        f"the answer is {len(result.response_body)} bytes, over the endpoint's limit of {max_bytes} bytes "
        "(limits.max_response_bytes); send fewer records per request"
    )
    return result.as_error(error, _json({"error_code": error.error_code, "message": error.message}))


def _failed(
    request: ScoringRequest,
    client_request_id: str | None,
    records: list[RecordResult],
    error: ScoringError,
    timings: Timings,
) -> RequestResult:
    body = _json({"error_code": error.error_code, "message": error.message})
    return RequestResult(
        request,
        error.status_code,
        body,
        records,
        client_request_id,
        error.error_code,
        error.message,
        None,
        timings,
    )


def _json(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, default=str, allow_nan=False).encode("utf-8")
