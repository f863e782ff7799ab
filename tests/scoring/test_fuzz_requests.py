"""A fuzzer (hypothesis) over JSON text for :func:`lakeserve.scoring.requests.parse`.

``parse`` scans a body's bytes in C and checks in Python only what the bytes say it may hold
(deep nesting, lone surrogates, integers beyond 64 bits, numbers that overflow to infinity). The
fuzzer writes JSON text the ways clients (and attackers) write it: number literals of every form,
escapes upper and lower case, lone surrogates escaped or as bytes, valid pairs, escaped
backslashes, UTF-8/16/32 with and without a BOM. Each body's answer is compared with what a
plain walk over the decoded document says it must be, so a scan that misses a case fails here.
"""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from lakeserve.errors import BadRequest, InvalidInput, ScoringError
from lakeserve.scoring.requests import MAX_DEPTH, ParsedRequest, parse

LIMIT = 1 << 20

NUMBERS = st.sampled_from([
    "0", "-0", "1", "-1", "1.5", "1e5", "1E5", "1e+5", "1E-5", "1e400", "1E+400", "-1e309", "1e0000400",
    "1.7976931348623157e308", "1.8e308", "2e-400", "9223372036854775807", "9223372036854775808",
    "18446744073709551615", "18446744073709551616", "-9223372036854775808", "-9223372036854775809",
    "1" + "0" * 30, "-" + "9" * 400, "0.0000000000000000000001", "12345678901234567890.5", "NaN",
    "Infinity", "-Infinity",
]) | st.integers(min_value=-(2**70), max_value=2**70).map(str) | st.floats(allow_nan=False).map(repr)  # fmt: skip
ESCAPED = st.sampled_from([
    '"\\ud800"', '"\\uD800"', '"\\udfff"', '"x\\uDBFFy"', '"\\ud83d\\ude00"', '"\\uD83D\\uDE00"',
    '"\\\\ud800"', '"\\u00e9"', '"\\ud7ff"', '"\\ue000"', '"\\ud83d"', '"\\ude00\\ud83d"',
])  # fmt: skip
LONE = st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=2)
TEXT = st.text(max_size=8) | LONE | st.sampled_from(["", "é", "💥", "\x00", "한국"])
STRINGS = ESCAPED | st.tuples(TEXT, st.booleans()).map(lambda t: json.dumps(t[0], ensure_ascii=t[1]))
SCALARS = NUMBERS | STRINGS | st.sampled_from(["true", "false", "null"])


def _array(items: list[str]) -> str:
    return "[" + ", ".join(items) + "]"


def _object(pairs: list[tuple[str, str]]) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in pairs) + "}"


VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3).map(_array) | st.lists(st.tuples(STRINGS, inner), max_size=3).map(_object)
    ),
    max_leaves=12,
)
NESTED = st.tuples(st.integers(min_value=0, max_value=MAX_DEPTH + 6), VALUES).map(
    lambda t: "[" * t[0] + t[1] + "]" * t[0]
)
ENCODINGS = st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32"])


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    value = draw(NESTED)
    shape = draw(st.sampled_from(["records", "split", "inputs", "bare", "extras"]))
    text = {
        "records": f'{{"dataframe_records": [{{"a": {value}, "b": 1}}]}}',
        "split": f'{{"dataframe_split": {{"columns": ["a"], "data": [[{value}], [2]]}}}}',
        "inputs": f'{{"inputs": {{"a": {value}}}}}',
        "bare": value,
        "extras": f'{{"dataframe_records": [{{"a": 1}}], "params": {{"p": {value}}}, "client_request_id": {value}}}',
    }[shape]
    return text.encode(draw(ENCODINGS), "surrogatepass")


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


class _Pairs(list[tuple[str, Any]]):
    """An object as every pair the text holds (a repeated name keeps each value it was given)."""


def _leaves(value: Any) -> list[Any]:
    """Every scalar and every field name of a decoded document."""
    if isinstance(value, _Pairs):
        return [leaf for k, v in value for leaf in [k, *_leaves(v)]]
    if isinstance(value, dict):
        return list(value) + [leaf for v in value.values() for leaf in _leaves(v)]
    if isinstance(value, list):
        return [leaf for v in value for leaf in _leaves(v)]
    return [value]


def _lone_surrogate(leaf: Any) -> bool:
    return isinstance(leaf, str) and any(0xD800 <= ord(c) <= 0xDFFF for c in leaf)


def _bad_number(leaf: Any) -> bool:
    if isinstance(leaf, float):
        return not math.isfinite(leaf)
    return isinstance(leaf, int) and not isinstance(leaf, bool) and not -(2**63) <= leaf <= 2**64 - 1


def _expected(body: bytes) -> type[ScoringError] | str | None:
    """What ``parse`` must answer, from a plain decode and walk: an error type, "syntax" for a body
    the decoder refuses (some 400), or None where the hostile-input checks must not object."""
    try:
        document = json.loads(body, parse_constant=float)
        every_pair = json.loads(body, parse_constant=float, object_pairs_hook=_Pairs)
    except (ValueError, RecursionError):
        return "syntax"
    if any(_bad_number(leaf) for leaf in _leaves(every_pair)):  # the decoder meets every number
        return InvalidInput
    if _depth(document) > MAX_DEPTH or any(_lone_surrogate(leaf) for leaf in _leaves(document)):
        return BadRequest  # checked on the document the records come from (the last of a repeated name)
    return None


HOSTILE_WORDS = ("nested deeper", "surrogate", "beyond 64 bits", "non-finite")


@settings(max_examples=1500, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
@given(bodies())
def test_parse_answers_what_a_full_walk_says(body: bytes) -> None:
    result = parse(body, LIMIT)  # never raises
    assert isinstance(result, ParsedRequest | ScoringError)
    expected = _expected(body)
    event(f"expected {getattr(expected, '__name__', expected)}")  # shown by --hypothesis-show-statistics
    if expected == "syntax":
        assert isinstance(result, ScoringError), result
        assert result.status_code == 400, result
    elif expected is None:
        message = result.message if isinstance(result, ScoringError) else ""
        assert not any(word in message for word in HOSTILE_WORDS), (body, message)
    else:
        assert type(result) is expected, (body, result)
        assert any(word in result.message for word in HOSTILE_WORDS), (body, result.message)
    if isinstance(result, ParsedRequest):
        json.dumps(result.records, ensure_ascii=False).encode("utf-8")  # every string encodes
        if result.client_request_id is not None:
            result.client_request_id.encode("utf-8")


def test_a_lone_surrogate_in_a_utf16_body_is_refused() -> None:
    body = '{"inputs": {"a": "\ud800"}}'.encode("utf-16", "surrogatepass")
    result = parse(body, LIMIT)
    assert isinstance(result, BadRequest)
    assert "lone surrogate" in result.message


def test_a_valid_surrogate_pair_is_one_character() -> None:
    result = parse(b'{"inputs": {"a": "\\ud83d\\ude00", "b": "\\\\ud800"}}', LIMIT)
    assert isinstance(result, ParsedRequest)
    assert result.records == [{"a": "\U0001f600", "b": "\\ud800"}]


def test_numbers_near_the_limits() -> None:
    limits = b'{"inputs": {"a": 18446744073709551615, "b": -9223372036854775808, "c": 1.7976931348623157e308}}'
    ok = parse(limits, LIMIT)
    assert isinstance(ok, ParsedRequest)
    for literal in (b"18446744073709551616", b"-9223372036854775809", b"1" + b"0" * 5000):
        refused = parse(b'{"inputs": {"a": ' + literal + b"}}", LIMIT)
        assert isinstance(refused, InvalidInput), refused
        assert "beyond 64 bits" in refused.message
    for literal in (b"1E+400", b"-1e309", b"1" + b"0" * 400 + b".0"):
        refused = parse(b'{"inputs": {"a": ' + literal + b"}}", LIMIT)
        assert isinstance(refused, InvalidInput), refused
        assert "non-finite" in refused.message


def test_nesting_at_the_limit_passes_and_one_deeper_is_refused() -> None:
    inside = MAX_DEPTH - 3  # the body's object, "inputs" and the record's column list hold it
    at_limit = b'{"inputs": {"a": [' + b"[" * inside + b"]" * inside + b"]}}"
    assert isinstance(parse(at_limit, LIMIT), ParsedRequest)
    deeper = b'{"inputs": {"a": [' + b"[" * (inside + 1) + b"]" * (inside + 1) + b"]}}"
    refused = parse(deeper, LIMIT)
    assert isinstance(refused, BadRequest)
    assert f"deeper than {MAX_DEPTH}" in refused.message
