"""MLflow scoring bodies: every format, the extras, and every bad body as an error value."""

from __future__ import annotations

import json
import math

import pytest

from lakeserve.errors import BadRequest, InvalidInput, PayloadTooLarge, ScoringError
from lakeserve.scoring.requests import ParsedRequest, parse

LIMIT = 16 * 1024 * 1024


def ok(body: object) -> ParsedRequest:
    parsed = parse(json.dumps(body).encode(), LIMIT)
    assert isinstance(parsed, ParsedRequest), parsed
    return parsed


def err(body: bytes, limit: int = LIMIT) -> ScoringError:
    parsed = parse(body, limit)
    assert isinstance(parsed, ScoringError)
    return parsed


@pytest.mark.parametrize(
    "body",
    [
        {"dataframe_split": {"columns": ["a", "b"], "data": [[1, "x"], [2, "y"]]}},
        {"dataframe_split": {"columns": ["a", "b"], "data": [[1, "x"], [2, "y"]], "index": [7, 8]}},
        {"dataframe_records": [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]},
        {"instances": [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]},
        {"inputs": {"a": [1, 2], "b": ["x", "y"]}},
        {"inputs": [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]},
    ],
)
def test_every_format_gives_the_same_records(body: dict[str, object]) -> None:
    parsed = ok(body)
    assert parsed.records == [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]
    assert all(list(r) == ["a", "b"] for r in parsed.records)


def test_inputs_of_scalars_is_one_record() -> None:
    assert ok({"inputs": {"a": 1, "b": "x"}}).records == [{"a": 1, "b": "x"}]


def test_client_request_id_and_params() -> None:
    parsed = ok({"dataframe_records": [{"a": 1}], "client_request_id": "c-1", "params": {"k": 3}})
    assert parsed.client_request_id == "c-1"
    assert parsed.params == {"k": 3}
    assert ok({"dataframe_records": [{"a": 1}]}).params == {}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"columns": ["a"]}', "found none"),
        (b'{"dataframe_records": [{"a": 1}], "inputs": {"a": [1]}}', "dataframe_records, inputs"),
        (b'{"dataframe_split": [[1]]}', "must be an object"),
        (b'{"dataframe_split": {"columns": ["a"]}}', "needs 'data'"),
        (b'{"dataframe_split": {"columns": ["a", "b"], "data": [[1]]}}', "2 values"),
        (b'{"dataframe_records": {"a": 1}}', "list of objects"),
        (b'{"dataframe_records": []}', "no records"),
        (b'{"instances": [[1, 2], [3, 4]]}', "tensor input"),
        (b'{"inputs": {"a": [1, 2], "b": [1]}}', "same length"),
        (b'{"inputs": {"a": [1, 2], "b": 1}}', "every column"),
        (b'{"inputs": [1, 2]}', "hold objects"),
        (b'{"dataframe_records": [{"a": 1}], "client_request_id": 5}', "client_request_id"),
        (b'{"dataframe_records": [{"a": 1}], "params": [1]}', "params"),
    ],
)
def test_malformed_bodies_are_bad_requests(body: bytes, fragment: str) -> None:
    error = err(body)
    assert isinstance(error, BadRequest)
    assert (error.status_code, error.error_code) == (400, "BAD_REQUEST")
    assert fragment in error.message


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_are_invalid_input(token: str) -> None:
    body = f'{{"dataframe_records": [{{"a": {token}}}]}}'.encode()
    error = err(body)
    assert isinstance(error, InvalidInput)
    assert error.error_code == "INVALID_PARAMETER_VALUE"
    allowed = parse(body, LIMIT, allow_non_finite=True)
    assert isinstance(allowed, ParsedRequest)


def test_payload_over_the_limit() -> None:
    body = json.dumps({"dataframe_records": [{"a": 1}] * 100}).encode()
    error = err(body, limit=len(body) - 1)
    assert isinstance(error, PayloadTooLarge)
    assert (error.status_code, error.error_code) == (413, "MAX_REQUEST_SIZE_EXCEEDED")
    assert isinstance(parse(body, len(body)), ParsedRequest)


def test_null_values_stay_records() -> None:
    parsed = ok({"dataframe_records": [{"a": 1, "b": None}, {"a": None}]})
    assert len(parsed.records) == 2
    assert [r["b"] for r in parsed.records] == [None, None]


def test_a_field_missing_from_one_record_is_null_there() -> None:
    parsed = ok({"dataframe_records": [{"a": 1}, {"b": "x"}, {"b": "y", "a": 3}]})
    assert parsed.records == [{"a": 1, "b": None}, {"a": None, "b": "x"}, {"a": 3, "b": "y"}]
    assert [list(r) for r in parsed.records] == [["a", "b"]] * 3


def test_split_without_columns_names_fields_by_position() -> None:
    parsed = ok({"dataframe_split": {"data": [[1, "x"], [2, "y"]]}})
    assert parsed.records == [{"0": 1, "1": "x"}, {"0": 2, "1": "y"}]


@pytest.mark.parametrize(
    "body",
    [b'{"dataframe_records": [{}]}', b'{"instances": [{}, {}]}', b'{"inputs": {}}', b'{"inputs": {"a": []}}'],
)
def test_records_without_fields_are_no_records(body: bytes) -> None:
    error = err(body)
    assert isinstance(error, BadRequest)
    assert "holds no records" in error.message


def test_allowed_non_finite_numbers_stay_in_the_records() -> None:
    parsed = parse(b'{"inputs": {"a": [NaN, 1.5]}}', LIMIT, allow_non_finite=True)
    assert isinstance(parsed, ParsedRequest)
    first, second = (r["a"] for r in parsed.records)
    assert math.isnan(first)
    assert second == 1.5
