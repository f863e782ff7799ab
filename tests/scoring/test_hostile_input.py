"""No input kills a worker: a corpus of bodies built to break parsers and casts, and a fuzzer
(hypothesis) over request bodies. Every request gets exactly one result, with a status the
transports know and a JSON answer; its rows build and its Kafka headers encode; the good
records of the same batch are still scored."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lakeserve.features.lookup import FeatureTable, InMemoryFeatureLookup, key_problem
from lakeserve.monitoring.inference_rows import to_arrow
from lakeserve.monitoring.table_schema import inference_schema
from lakeserve.pipelines.kafka_sinks import answer_headers, dead_letter_headers
from lakeserve.scoring.core import ScoringCore
from lakeserve.scoring.records import Origin, RequestResult, ScoringRequest
from lakeserve.scoring.settings import EndpointSettings, Limits, Route, ServedEntity, TrafficConfig
from lakeserve.scoring.testing import FakeServedModel

SCHEMA = pa.schema([
    pa.field("customer_id", pa.int64(), nullable=False),
    pa.field("hour", pa.int32(), nullable=False),
    pa.field("amount", pa.float64(), nullable=False),
    pa.field("weight", pa.float32(), nullable=True),
    pa.field("category", pa.string(), nullable=True),
    pa.field("visits", pa.int64(), nullable=True),
    pa.field("seen_at", pa.timestamp("us", tz="UTC"), nullable=True),
    pa.field("avg_amount", pa.float64(), nullable=False),
])  # fmt: skip
STATUSES = {200, 400, 404, 413, 500, 504}
GOOD = {"customer_id": 1, "hour": 3, "amount": 5.0, "weight": 1.0, "category": "fuel"}
TABLE = inference_schema(
    {"customer_id": pa.int64(), "hour": pa.int32(), "amount": pa.float64(), "weight": pa.float32(),
     "category": pa.string(), "visits": pa.int64(), "seen_at": pa.timestamp("us", tz="UTC"),
     "avg_amount": pa.float64()},
    {"prediction": pa.float64()},
)  # fmt: skip


def new_core() -> ScoringCore:
    frame = pd.DataFrame({"customer_id": [1, 2, 3], "avg_amount": [10.0, 20.0, 30.0]})
    lookup = InMemoryFeatureLookup({"fs": FeatureTable(["customer_id"], frame)})
    model = FakeServedModel(name="m", fn=lambda f: f["amount"] / f["avg_amount"], input_schema=SCHEMA,
                            feature_service="fs", entity_keys=["customer_id"])  # fmt: skip
    endpoint = EndpointSettings(
        served_entities=[ServedEntity(name="m", entity_name="m", entity_version="1")],
        traffic_config=TrafficConfig(routes=[Route(served_model_name="m", traffic_percentage=100)]),
        limits=Limits(max_request_bytes=200_000),
    )
    return ScoringCore(endpoint, {"m": model}, lookup)


def request(raw: bytes, rid: str, client_id: str | None = None) -> ScoringRequest:
    headers = {"x-client": client_id} if client_id else {}
    return ScoringRequest(rid, raw, datetime.now(UTC), Origin("kafka", "requests", 0, 0, b"k"), headers)


def records(*rows: dict[str, Any]) -> bytes:
    return json.dumps({"dataframe_records": list(rows)}).encode()


def check(results: Sequence[RequestResult], count: int) -> None:
    """What must hold for any input: one result each, a known status, JSON answers, rows, headers."""
    assert len(results) == count
    for r in results:
        assert r.status_code in STATUSES, (r.status_code, r.message)
        json.loads(r.response_body)
        answer_headers(r)
        dead_letter_headers(r)
    rows = to_arrow(results, TABLE, "ep", 1.0, 1 << 20)
    assert rows.num_rows >= count


HOSTILE: list[tuple[str, bytes, int, str]] = [
    ("deep nesting", b'{"dataframe_records": [{"amount": ' + b"[" * 5000 + b"]" * 5000 + b"}]}", 400, "deeper"),
    ("nesting the decoder refuses", b"[" * 50_000 + b"]" * 50_000, 400, "nested deeper"),
    ("lone surrogate in a key", b'{"dataframe_records": [{"customer_id": "\\ud800"}]}', 400, "lone surrogate"),
    ("lone surrogate in a field name", b'{"dataframe_records": [{"\\udfff": 1, "customer_id": 1}]}', 400, "surrogate"),
    ("lone surrogate as bytes", b'{"inputs": {"category": "\xed\xa0\x80"}}', 400, "surrogate"),
    ("surrogate client id", b'{"inputs": {"customer_id": 1}, "client_request_id": "\\ud83d"}', 400, "surrogate"),
    ("string for an int64 key", records({**GOOD, "customer_id": "abc"}), 400, "expects an integer (int64)"),
    ("fraction for an int64 key", records({**GOOD, "customer_id": 1.5}), 400, "got float 1.5"),
    ("boolean key", records({**GOOD, "customer_id": True}), 400, "got bool"),
    ("list key", records({**GOOD, "customer_id": [1]}), 400, "entity key"),
    ("object key", records({**GOOD, "customer_id": {"id": 1}}), 400, "entity key"),
    ("key beyond int64", records({**GOOD, "customer_id": 2**63 + 1}), 400, "out of range"),
    ("integer beyond 64 bits", records({**GOOD, "amount": 2**70}), 400, "beyond 64 bits"),
    ("integer below 64 bits", records({**GOOD, "amount": -(2**63) - 1}), 400, "beyond 64 bits"),
    ("int32 overflow", records({**GOOD, "hour": 2**40}), 400, "out of range"),
    ("int32 overflow as a float", records({**GOOD, "hour": 2147483648.0}), 400, "expects int32, got 2147483648.0"),
    ("2**63 as a float for int64", records({**GOOD, "visits": float(2**63)}), 400, "out of range"),
    ("long string key", records({**GOOD, "customer_id": "a" * 100_000}), 400, "expects an integer (int64)"),
    ("exponent overflow", b'{"inputs": {"customer_id": 1, "amount": 1E+400}}', 400, "non-finite"),
    ("upper-case surrogate escape", b'{"inputs": {"category": "x\\uDFFF"}}', 400, "lone surrogate"),
    ("surrogate in params", b'{"inputs": {"customer_id": 1}, "params": {"\\ud800": 1}}', 400, "surrogate"),
    ("surrogate in UTF-16", '{"inputs": {"category": "\ud800"}}'.encode("utf-16", "surrogatepass"), 400, "surrogate"),
    ("float32 overflow", records({**GOOD, "weight": 1e39}), 400, "out of range"),
    ("NaN token", b'{"dataframe_records": [{"customer_id": 1, "amount": NaN}]}', 400, "non-finite"),
    ("boolean for an int", records({**GOOD, "hour": False}), 400, "got bool"),
    ("not UTF-8", b'{"inputs": {"category": "\xff\xfe"}}', 400, "not valid JSON"),
    ("empty body", b"", 400, "not valid JSON"),
    ("a bare string", b'"dataframe_records"', 400, "JSON object"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "raw", "status", "says"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_body_is_a_4xx_of_its_own_and_the_batch_goes_on(name: str, raw: bytes, status: int, says: str) -> None:
    core = new_core()
    results = core.score([request(records(GOOD), "good-1"), request(raw, "bad"), request(records(GOOD), "good-2")])
    check(results, 3)
    good1, bad, good2 = results
    assert (good1.status_code, good2.status_code) == (200, 200)
    assert bad.status_code == status, (name, bad.message)
    assert says in (bad.message or ""), (name, bad.message)


KEYS: list[tuple[Any, pa.DataType | None, str | None]] = [
    (7, pa.int64(), None), (7.0, pa.int64(), None), ("abc", pa.int64(), "expects an integer (int64), got str 'abc'"),
    (1.5, pa.int64(), "got float 1.5"), (True, pa.int64(), "got bool True"),
    (2**31, pa.int32(), "out of range for int32"), (-1, pa.uint64(), "out of range for uint64"),
    (float("inf"), pa.int64(), "got float inf"),
    ("DE", pa.string(), None), (7, pa.string(), "expects a string (string), got int 7"),
    ([1], pa.string(), "got list [1]"), ({"a": 1}, pa.string(), "got dict"), ("x" * 2000, pa.string(), "longer than"),
    (2.5, pa.float64(), None), (float("nan"), pa.float64(), "expects a finite number"), (True, pa.bool_(), None),
    (1, pa.bool_(), "expects a boolean (bool)"), ("a", None, None), (2**64, None, "out of range for int64"),
    (1.5, None, "expects a string or an integer, got float 1.5"), (b"raw", pa.binary(), None),
]  # fmt: skip


@pytest.mark.parametrize(("value", "type_", "says"), KEYS)
def test_key_problem_names_what_a_key_of_its_type_cannot_be(value: Any, type_: Any, says: str | None) -> None:
    problem = key_problem(value, type_)
    assert (problem is None) == (says is None), problem
    assert says is None or says in (problem or ""), problem


def test_values_that_once_broke_a_batch_are_scored() -> None:
    """Timestamps in different formats in one frame, and optional columns no record carries."""
    core = new_core()
    mixed = records({**GOOD, "seen_at": "2024-01-01"}, {**GOOD, "seen_at": "2024-01-01 10:00:00+05:00"})
    required_only = records({"customer_id": 2, "hour": 1, "amount": 4.0})
    results = core.score([request(mixed, "mixed")]) + core.score([request(required_only, "required-only")])
    check(results, 2)
    assert [r.status_code for r in results] == [200, 200], [r.message for r in results]
    assert json.loads(results[1].response_body) == {"predictions": [0.2]}


def test_a_bug_met_by_one_request_costs_only_that_request() -> None:
    core = new_core()
    model = core.table.models["m"]
    assert isinstance(model, FakeServedModel)
    real = core._route

    def route_once_broken(requests: Any, parsed: Any, table: Any) -> Any:
        if any(r.request_id == "poison" for r in requests):
            raise KeyError("a bug")
        return real(requests, parsed, table)

    core._route = route_once_broken  # type: ignore[method-assign]
    results = core.score([request(records(GOOD), "a"), request(records(GOOD), "poison"), request(records(GOOD), "b")])
    check(results, 3)
    assert [r.status_code for r in results] == [200, 500, 200]
    assert results[1].error_code == "INTERNAL_ERROR"
    assert "a bug" not in (results[1].message or "")  # the exception goes to the log, not to the client


NASTY_TEXT = st.sampled_from([
    "", "\ud800", "\udfff", "\x00", "é", "💥", "a" * 2000, "NaN", "1e999", "-0", "2024-01-01",
    "2024-01-01 10:00:00+05:00", "Jan 5 2024", "99999-01-01", "now",
])  # fmt: skip
NUMBERS = st.sampled_from(
    [2**31, -(2**31) - 1, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, float(2**63), 1e39, 3.4e38, -0.0]
)
SCALARS = (
    st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20) | NASTY_TEXT | NUMBERS
)  # fmt: skip
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20,
)
FIELDS = st.sampled_from(
    ["customer_id", "hour", "amount", "weight", "category", "visits", "seen_at", "other", "\ud800", ""]
)
RECORDS = st.lists(st.dictionaries(FIELDS, VALUES, max_size=6), min_size=0, max_size=4)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["records", "split", "instances", "inputs", "extras", "raw", "json", "utf16", "cut"]))
    rows = draw(RECORDS)
    if kind == "raw":
        return draw(st.binary(max_size=200))
    if kind == "json":
        return json.dumps(draw(VALUES)).encode()
    if kind == "split":
        columns = sorted({k for r in rows for k in r})
        document: Any = {"dataframe_split": {"columns": columns, "data": [[r.get(c) for c in columns] for r in rows]}}
    elif kind == "inputs":
        document = {"inputs": rows[0] if rows else draw(VALUES)}
    else:
        document = {"dataframe_records" if kind != "instances" else "instances": rows}
    if kind == "extras":
        document["params"] = draw(VALUES)
        document["client_request_id"] = draw(VALUES)
    text = json.dumps(document, ensure_ascii=draw(st.booleans()))
    if kind == "utf16":
        return text.encode("utf-16", "surrogatepass")
    raw = text.encode("utf-8", "surrogatepass")
    if kind == "cut":  # a few bytes replaced somewhere
        at = draw(st.integers(min_value=0, max_value=len(raw) - 1))
        raw = raw[:at] + draw(st.binary(max_size=4)) + raw[at + 1 :]
    return raw


@settings(max_examples=200, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
@given(st.lists(bodies(), min_size=1, max_size=6))
def test_fuzzed_bodies_never_break_the_core(raws: list[bytes]) -> None:
    core = new_core()
    batch = [request(raw, f"r{i}") for i, raw in enumerate(raws)] + [request(records(GOOD), "control")]
    results = core.score(batch)
    check(results, len(batch))
    assert results[-1].status_code == 200  # the good request of the batch is answered
    bugs = [(r.request.body[:200], r.message) for r in results if r.error_code == "INTERNAL_ERROR"]
    assert not bugs  # the core turns a bug into a 500 of its own: no input may meet one
