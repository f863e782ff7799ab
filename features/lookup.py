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
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import pandas as pd

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
