"""Feature lookup behind one small interface, and an in-memory fake for pure-logic tests.

The scoring core asks for features once per feature service per micro-batch:
``get(feature_service, keys)`` takes one row of entity-key values per record and returns a
frame aligned with those rows plus a per-row ``found`` mask. A key that the store does not
know is not an exception: its row is ``found=False`` with null features, and the core turns it
into a ``RESOURCE_DOES_NOT_EXIST`` (404) record error. Failures of the store itself are raised
as :class:`~lakeserve.errors.ComponentError` (wrapped where they enter).
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa

from lakeserve.errors import ConfigError


@dataclass(frozen=True, slots=True)
class LookupResult:
    """Features for the key rows, in the same order (``RangeIndex``), and which rows were found."""

    features: pd.DataFrame
    found: npt.NDArray[np.bool_]

    def __post_init__(self) -> None:
        if len(self.features) != len(self.found):
            raise ValueError(
                f"lookup returned {len(self.features)} feature rows for {len(self.found)} key rows"
            )


class FeatureLookup(Protocol):
    """Where the looked-up features of a feature service come from."""

    def entity_keys(self, feature_service: str) -> list[str]:
        """The join keys a request must carry for ``feature_service``; ConfigError if unknown."""
        ...

    def key_types(self, feature_service: str) -> dict[str, pa.DataType | None]:
        """The join keys with their Arrow types (None: any string or integer), for :func:`key_problem`."""
        ...

    def get(self, feature_service: str, keys: pd.DataFrame) -> LookupResult:
        """Features for every row of ``keys`` (columns: the entity keys), in one store call."""
        ...


def normalize_key(value: Any) -> Hashable | None:
    """One Python value per entity key: numpy scalars unboxed, integral floats as int, NaN as None.

    JSON gives ``42`` or ``42.0`` for the same customer (pandas turns an int column with a null
    into floats), so both must find, route and hash the same way.
    """
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if value.is_integer():
            return int(value)
    return value if isinstance(value, Hashable) else str(value)


MAX_KEY_CHARS = 1024
PRIVATE_KEY = "__lakeserve_"  # a join key of this prefix is bookkeeping (the batch job's row), never shown


def key_problem(value: Any, type_: pa.DataType | None) -> str | None:
    """Why ``value`` (a request field, as sent or normalized; not null) cannot be looked up as an
    entity key of Arrow type ``type_`` (None: any string or integer), or None when it can.

    A key of the wrong kind (``"abc"`` or ``1.5`` for an int64 key, a boolean, a list), out of the
    type's range, non-finite or longer than :data:`MAX_KEY_CHARS` is the caller's mistake (a 400
    for its record), never a call to the store that fails as if the store were down. A key of a
    type not checked here (binary, timestamp) is left to the store."""
    return key_checker(type_)(value)


def key_checker(type_: pa.DataType | None) -> Callable[[Any], str | None]:
    """:func:`key_problem` for one key type, with what depends on the type worked out once (for a
    batch of keys)."""
    family = "any" if type_ is None else _FAMILIES.get(type_, "other")
    kind_ok = _KIND_OK.get(family, _any_value)
    bools_ok = family in ("boolean", "other")  # True is an int to Python, not to a key type
    wanted = _WANTED.get(family, "a value") + ("" if type_ is None else f" ({type_})")
    bounds = _INT_BOUNDS[type_ or pa.int64()] if family in ("any", "integer") else None

    def problem(value: Any) -> str | None:
        key = None if type(value).__hash__ is None else normalize_key(value)  # a list is no key
        if key is None or not kind_ok(key) or (not bools_ok and isinstance(key, bool)):
            sent = value.item() if isinstance(value, np.generic) else value
            return f"expects {wanted}, got {type(sent).__name__} {reprlib.repr(sent)}"
        if isinstance(key, str) and len(key) > MAX_KEY_CHARS:
            return f"is longer than {MAX_KEY_CHARS} characters"
        if bounds is not None and isinstance(key, int) and not bounds[0] <= key <= bounds[1]:
            return f"{reprlib.repr(key)} is out of range for {type_ or 'int64'}"
        return None

    return problem


_WANTED = {
    "any": "a string or an integer",
    "integer": "an integer",
    "string": "a string",
    "floating": "a finite number",
    "boolean": "a boolean",
}
_INTEGERS = (pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64())
_INT_BOUNDS = {t: (int(np.iinfo(t.to_pandas_dtype()).min), int(np.iinfo(t.to_pandas_dtype()).max)) for t in _INTEGERS}
_FAMILIES: dict[pa.DataType, str] = {  # the kind of key values an Arrow type holds; others: "other"
    **dict.fromkeys(_INTEGERS, "integer"),
    **dict.fromkeys((pa.string(), pa.large_string()), "string"),
    **dict.fromkeys((pa.float16(), pa.float32(), pa.float64()), "floating"),
    pa.bool_(): "boolean",
}


def _any_value(key: Hashable) -> bool:
    return True


_KIND_OK: dict[str, Callable[[Hashable], bool]] = {
    "any": lambda k: isinstance(k, int | str),
    "integer": lambda k: isinstance(k, int),
    "string": lambda k: isinstance(k, str),
    "floating": lambda k: isinstance(k, int) or (isinstance(k, float) and math.isfinite(k)),
    "boolean": lambda k: isinstance(k, bool),
}


def key_tuples(keys: pd.DataFrame) -> list[tuple[Hashable | None, ...]]:
    """The normalized key of every row of ``keys``, as a tuple over its columns."""
    columns = [[normalize_key(v) for v in keys[c].tolist()] for c in keys.columns]
    return list(zip(*columns, strict=True)) if columns else [() for _ in range(len(keys))]


@dataclass(frozen=True, slots=True)
class FeatureTable:
    """The rows of one feature service in :class:`InMemoryFeatureLookup`: keys and features."""

    entity_keys: Sequence[str]
    frame: pd.DataFrame  # entity-key columns plus feature columns, one row per entity


@dataclass
class InMemoryFeatureLookup:
    """A fake online store over small frames; records every ``get`` call for assertions."""

    tables: Mapping[str, FeatureTable]
    calls: list[tuple[str, int]] = field(default_factory=list)  # (feature_service, rows)

    def entity_keys(self, feature_service: str) -> list[str]:
        return list(self._table(feature_service).entity_keys)

    def key_types(self, feature_service: str) -> dict[str, pa.DataType | None]:
        table = self._table(feature_service)
        schema = pa.Schema.from_pandas(table.frame[list(table.entity_keys)], preserve_index=False)
        return {name: schema.field(name).type for name in table.entity_keys}

    def get(self, feature_service: str, keys: pd.DataFrame) -> LookupResult:
        table = self._table(feature_service)
        self.calls.append((feature_service, len(keys)))
        key_cols = list(table.entity_keys)
        feature_cols = [c for c in table.frame.columns if c not in key_cols]
        index = {k: i for i, k in enumerate(key_tuples(table.frame[key_cols]))}
        positions = [index.get(k, -1) for k in key_tuples(keys[key_cols])]
        found = np.array([p >= 0 for p in positions], dtype=np.bool_)
        rows = table.frame[feature_cols].reset_index(drop=True)
        taken = rows.reindex([p if p >= 0 else len(rows) for p in positions])
        return LookupResult(features=taken.reset_index(drop=True), found=found)

    def _table(self, feature_service: str) -> FeatureTable:
        try:
            return self.tables[feature_service]
        except KeyError:
            raise ConfigError(
                f"feature service {feature_service!r} is unknown (known: {sorted(self.tables)})"
            ) from None
