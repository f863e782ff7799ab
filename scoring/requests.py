"""MLflow scoring bodies (bytes) → records (plain dicts), ``client_request_id`` and ``params``.

The body is a JSON object with exactly one of the formats ``mlflow models serve`` accepts:

- ``dataframe_split``: ``{"columns": [...], "data": [[...], ...]}`` (``index`` optional);
- ``dataframe_records``: ``[{"col": value, ...}, ...]``;
- ``instances``: a list of records (``[{"col": value}, ...]``). MLflow turns a list of
  scalars or of lists into a tensor; that is not a tabular request and answers 400 here;
- ``inputs``: columns (``{"col": [v1, v2]}``, or scalars for one record) or a list of records.

plus optional ``params`` (an object) and ``client_request_id`` (a string). Other top-level keys
are ignored, as MLflow's scoring server ignores them. JSON ``NaN``/``Infinity`` tokens (and
numbers that overflow to infinity) are refused with ``INVALID_PARAMETER_VALUE`` unless the
caller allows them. :func:`parse` never raises for bad input: it returns the error as a value.

Hostile bodies are refused here, before anything downstream can trip on them: values nested
deeper than :data:`MAX_DEPTH` levels (``BAD_REQUEST``; JSON nested too deep for the decoder
itself too), and strings holding a lone surrogate (``"\ud800"``, or the bytes of one: Python's
decoder lets both through, and no UTF-8 consumer downstream accepts them).

The records stay the JSON decoder's dicts (field names as strings; ``dataframe_split`` without
``columns`` names them ``"0"``, ``"1"``, ...): no frame is built per request. The scoring core
builds one frame per served model per micro-batch, where the model needs one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lakeserve.errors import BadRequest, InvalidInput, PayloadTooLarge, ScoringError

DF_SPLIT = "dataframe_split"
DF_RECORDS = "dataframe_records"
INSTANCES = "instances"
INPUTS = "inputs"
FORMATS = (DF_SPLIT, DF_RECORDS, INSTANCES, INPUTS)

Record = dict[str, Any]  # one record: field name → JSON value (None for null or absent)
MAX_DEPTH = 32  # containers inside a request, the body's own object and format included


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    """The records of one request, in order, every one with the same fields, and its extras."""

    records: list[Record]
    client_request_id: str | None = None
    params: dict[str, Any] = field(default_factory=dict)


class _NonFiniteError(ValueError):
    """Raised from inside ``json.loads`` when a non-finite number is met."""


def parse(body: bytes, max_bytes: int, *, allow_non_finite: bool = False) -> ParsedRequest | ScoringError:
    """Parse one scoring body; a :class:`ScoringError` value says why it cannot be scored."""
    if len(body) > max_bytes:
        return PayloadTooLarge(f"request is {len(body)} bytes, over the limit of {max_bytes} bytes")
    try:
        document = _decode(body, allow_non_finite)
    except _NonFiniteError as exc:
        return InvalidInput(f"non-finite number {exc} is not allowed in a scoring request")
    except RecursionError:
        return BadRequest(f"body is nested deeper than {MAX_DEPTH} levels")
    except (ValueError, UnicodeDecodeError) as exc:
        return BadRequest(f"body is not valid JSON: {exc}")
    try:
        _check_values(document, 0)
        return _parse_document(document)
    except ScoringError as exc:
        return exc


def _check_values(value: Any, depth: int) -> None:
    """Refuse nesting deeper than MAX_DEPTH, strings with lone surrogates and integers beyond 64
    bits, anywhere (no model input type holds them; pandas cannot even build a frame of them)."""
    kind = type(value)
    if kind is str:
        if not value.isascii():
            _check_text(value)
        return
    if kind is int:
        if not _INT_MIN <= value <= _INT_MAX:
            raise InvalidInput(f"integer {str(value)[:30]}... is beyond 64 bits")
        return
    if kind is not dict and kind is not list:
        return
    if depth >= MAX_DEPTH:
        raise BadRequest(f"body is nested deeper than {MAX_DEPTH} levels")
    if kind is dict:
        for key, item in value.items():
            if not key.isascii():
                _check_text(key)
            if type(item) in _CHECKED:
                _check_values(item, depth + 1)
    else:
        for item in value:
            if type(item) in _CHECKED:
                _check_values(item, depth + 1)


_CHECKED = frozenset({dict, list, str, int})
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"body holds a lone surrogate (invalid UTF-16): {text[:40]!r}") from None


def _decode(body: bytes, allow_non_finite: bool) -> Any:
    def constant(token: str) -> float:
        if not allow_non_finite:
            raise _NonFiniteError(token)
        return float(token)

    def number(token: str) -> float:
        value = float(token)
        if math.isinf(value) and not allow_non_finite:
            raise _NonFiniteError(token)
        return value

    return json.loads(body, parse_constant=constant, parse_float=number)


def _parse_document(document: Any) -> ParsedRequest:
    if not isinstance(document, dict):
        raise BadRequest(f"body must be a JSON object with one of {list(FORMATS)}, got {_kind(document)}")
    present = [f for f in FORMATS if f in document]
    if len(present) != 1:
        found = "none" if not present else ", ".join(present)
        raise BadRequest(f"body must hold exactly one of {list(FORMATS)}; found {found}")
    records = _FRAMERS[present[0]](document[present[0]])
    if len(records) == 0:
        raise BadRequest(f"{present[0]} holds no records")
    return ParsedRequest(
        records=records,
        client_request_id=_client_request_id(document.get("client_request_id")),
        params=_params(document.get("params")),
    )


def _client_request_id(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise BadRequest(f"client_request_id must be a string, got {_kind(value)}")


def _params(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    raise BadRequest(f"params must be a JSON object, got {_kind(value)}")


def _from_split(value: Any) -> list[Record]:
    if not isinstance(value, dict):
        raise BadRequest(f"{DF_SPLIT} must be an object, got {_kind(value)}")
    extra = set(value) - {"columns", "data", "index"}
    if "data" not in value or extra:
        raise BadRequest(f"{DF_SPLIT} needs 'data' and optionally 'columns', 'index'; got {sorted(value)}")
    data, columns = value["data"], value.get("columns")
    if not isinstance(data, list) or not all(isinstance(row, list) for row in data):
        raise BadRequest(f"{DF_SPLIT}.data must be a list of rows (lists)")
    if columns is not None and not (isinstance(columns, list) and all(isinstance(c, str) for c in columns)):
        raise BadRequest(f"{DF_SPLIT}.columns must be a list of strings")
    width = len(columns) if columns is not None else (len(data[0]) if data else 0)
    if any(len(row) != width for row in data):
        raise BadRequest(f"every row of {DF_SPLIT}.data must have {width} values")
    names = columns if columns is not None else [str(i) for i in range(width)]
    return [dict(zip(names, row, strict=True)) for row in data]


def _from_records(value: Any) -> list[Record]:
    if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
        raise BadRequest(f"{DF_RECORDS} must be a list of objects, got {_kind(value)}")
    return _aligned(value)


def _aligned(records: list[Record]) -> list[Record]:
    """Every record with the union of all records' fields (first-seen order), absent as None.

    As a frame of the records would hold them: a field missing from one record is null there,
    and records that hold no field at all are no records.
    """
    if len(records) == 1:
        return records if records[0] else []
    names = list(dict.fromkeys(k for r in records for k in r))
    if not names:
        return []
    if all(len(r) == len(names) for r in records):
        return records
    return [{k: r.get(k) for k in names} for r in records]


def _from_instances(value: Any) -> list[Record]:
    if isinstance(value, list) and all(isinstance(r, dict) for r in value):
        return _from_records(value)
    raise BadRequest(
        f"{INSTANCES} must be a list of objects (one per record); tensor input is not served by "
        f"tabular models, send {DF_SPLIT} instead"
    )


def _from_inputs(value: Any) -> list[Record]:
    if isinstance(value, list):
        if all(isinstance(r, dict) for r in value):
            return _from_records(value)
        raise BadRequest(f"{INPUTS} as a list must hold objects (one per record)")
    if not isinstance(value, dict):
        raise BadRequest(f"{INPUTS} must be an object of columns or a list of records, got {_kind(value)}")
    lists = [isinstance(v, list) for v in value.values()]
    if all(lists):
        lengths = {len(v) for v in value.values()}
        if len(lengths) > 1:
            raise BadRequest(f"the columns of {INPUTS} must all have the same length, got {sorted(lengths)}")
        names = list(value)
        return [dict(zip(names, row, strict=True)) for row in zip(*value.values(), strict=True)]
    if not any(lists):
        return [dict(value)]
    raise BadRequest(f"{INPUTS} must give every column as a list, or every column as one value")


_FRAMERS: dict[str, Callable[[Any], list[Record]]] = {
    DF_SPLIT: _from_split,
    DF_RECORDS: _from_records,
    INSTANCES: _from_instances,
    INPUTS: _from_inputs,
}


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", type(None): "null"}.get(
        type(value), type(value).__name__
    )
