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
itself too), strings or field names holding a lone surrogate (``BAD_REQUEST``: ``"\\ud800"``, or
the bytes of one; Python's decoder lets both through, and no UTF-8 consumer downstream accepts
them) and integers beyond 64 bits (``INVALID_PARAMETER_VALUE``). The body's bytes are scanned in
C first, so a body that cannot hold one of these costs no Python step per value.

The records stay the JSON decoder's dicts (field names as strings; ``dataframe_split`` without
``columns`` names them ``"0"``, ``"1"``, ...): no frame is built per request. The scoring core
builds one frame per served model per micro-batch, where the model needs one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
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


class _IntegerRangeError(ValueError):
    """Raised from inside ``json.loads`` when an integer beyond 64 bits is met."""


def parse(body: bytes, max_bytes: int, *, allow_non_finite: bool = False) -> ParsedRequest | ScoringError:
    """Parse one scoring body; a :class:`ScoringError` value says why it cannot be scored."""
    if len(body) > max_bytes:
        return PayloadTooLarge(f"request is {len(body)} bytes, over the limit of {max_bytes} bytes")
    suspects = _suspects(body)
    try:
        document = _decode(body, allow_non_finite, suspects)
    except _NonFiniteError as exc:
        return InvalidInput(f"non-finite number {exc} is not allowed in a scoring request")
    except _IntegerRangeError as exc:
        return InvalidInput(f"integer {exc} is beyond 64 bits")
    except RecursionError:
        return BadRequest(f"body is nested deeper than {MAX_DEPTH} levels")
    except (ValueError, UnicodeDecodeError) as exc:
        return BadRequest(f"body is not valid JSON: {exc}")
    try:
        _refuse_hostile(document, suspects)
        return _parse_document(document)
    except ScoringError as exc:
        return exc


@dataclass(frozen=True, slots=True)
class _Suspects:
    """What a body's bytes may hold, found by scans in C; only that is then checked in Python."""

    nesting: bool  # more than MAX_DEPTH brackets: maybe nested too deep
    surrogates: bool  # an escape in \uD800-\uDFFF, or the (surrogatepass) bytes of one
    long_digits: bool  # a run of 19 digits: maybe an integer beyond 64 bits, or a float beyond any
    big_exponent: bool  # an exponent of 3 digits or more: maybe a float that overflows to infinity


_SUSPECT_ALL = _Suspects(nesting=True, surrogates=True, long_digits=True, big_exponent=True)
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1  # int64 and uint64 values both pass
_CONTAINERS = frozenset({dict, list})
# the bytes as scanned: every digit a 0, \uD... as \ud..., E as e, { as [ and without "+"
_SCAN, _DROPPED = bytes.maketrans(b"123456789DE{", b"000000000de["), b"+"
_LONG_DIGITS = b"0" * 19  # the shortest integer beyond 64 bits, -9223372036854775809, has 19 digits


def _suspects(body: bytes) -> _Suspects:
    """The checks ``body`` needs. The decoder also reads UTF-16 and UTF-32, where the byte scans
    see nothing: such a body is suspected of everything."""
    if json.detect_encoding(body) not in ("utf-8", "utf-8-sig"):
        return _SUSPECT_ALL
    scanned = body.translate(_SCAN, _DROPPED)
    return _Suspects(
        nesting=scanned.count(b"[") > MAX_DEPTH,
        surrogates=b"\\ud" in scanned or b"\xed" in scanned,  # \ud800-\udfff escaped, or their bytes
        long_digits=_LONG_DIGITS in scanned,
        big_exponent=b"e000" in scanned,
    )


def _refuse_hostile(document: Any, suspects: _Suspects) -> None:
    """Raise BadRequest for nesting deeper than MAX_DEPTH or a lone surrogate anywhere in the body
    (field names included): no model input holds them, and no UTF-8 consumer downstream (Arrow,
    Kafka headers, JSON answers) accepts a lone surrogate."""
    if suspects.nesting and type(document) in _CONTAINERS and _too_deep(document, 0):
        raise BadRequest(f"body is nested deeper than {MAX_DEPTH} levels")
    if suspects.surrogates:
        try:
            json.dumps(document, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            near = exc.object[max(exc.start - 20, 0) : exc.end + 20]
            raise BadRequest(f"body holds a lone surrogate (invalid UTF-16) in {near!r}") from None


def _too_deep(container: dict[str, Any] | list[Any], depth: int) -> bool:
    """Whether ``container`` (at ``depth``, the body's own object at 0) or a container inside it
    lies MAX_DEPTH levels deep. Scalars are skipped by ``map(type, ...)`` in C: only containers that
    hold containers cost Python steps."""
    if depth >= MAX_DEPTH:
        return True
    items: Iterable[Any] = container.values() if isinstance(container, dict) else container
    if _CONTAINERS.isdisjoint(map(type, items)):
        return False
    return any(_too_deep(item, depth + 1) for item in items if type(item) in _CONTAINERS)


def _decode(body: bytes, allow_non_finite: bool, suspects: _Suspects) -> Any:
    """``json.loads`` refusing NaN/Infinity tokens and numbers that overflow to infinity (unless
    allowed), and integers beyond 64 bits (no model input type holds them; pandas cannot build a
    frame of them). Numbers are checked one by one in Python only where the bytes say they may need it."""

    def constant(token: str) -> float:
        if not allow_non_finite:
            raise _NonFiniteError(token)
        return float(token)

    def number(token: str) -> float:
        value = float(token)
        if math.isinf(value):
            raise _NonFiniteError(_shorter(token))
        return value

    def integer(token: str) -> int:
        value = int(token) if len(token) <= 21 else None  # int() of a very long token is slow
        if value is None or not _INT_MIN <= value <= _INT_MAX:
            raise _IntegerRangeError(_shorter(token))
        return value

    overflows = not allow_non_finite and (suspects.long_digits or suspects.big_exponent)
    return json.loads(
        body,
        parse_constant=constant,
        parse_float=number if overflows else None,
        parse_int=integer if suspects.long_digits else None,
    )


def _shorter(token: str) -> str:
    return token if len(token) <= 30 else token[:27] + "..."


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
