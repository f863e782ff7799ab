"""The Feast implementation of :class:`~lakeserve.features.lookup.FeatureLookup`.

One ``get_online_features(features=<FeatureService>, entity_rows=<columns>)`` call per feature
service per micro-batch, never one per record. A key the online store does not hold comes back
with status ``NOT_FOUND`` (``OUTSIDE_MAX_AGE`` when its row is older than the view's TTL) and a
null value; such rows are ``found=False``, as are keys that are absent or not a value of their
join key's type (the store is never asked for those). ``FeatureService`` objects, their join
keys and feature types are read from the registry once and cached (registry reads are slow).
Feast is imported lazily: importing it costs seconds, and only this module needs it.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

from lakeserve.errors import ComponentError, ConfigError
from lakeserve.features.lookup import LookupResult, key_checker, key_tuples

if TYPE_CHECKING:
    from feast import FeatureService, FeatureStore

# Feast value types (by name) as Arrow types; anything else is left for Arrow to infer.
_ARROW_TYPES: dict[str, pa.DataType] = {
    "BYTES": pa.binary(),
    "STRING": pa.string(),
    "INT32": pa.int32(),
    "INT64": pa.int64(),
    "DOUBLE": pa.float64(),
    "FLOAT": pa.float32(),
    "BOOL": pa.bool_(),
    "UNIX_TIMESTAMP": pa.timestamp("us", tz="UTC"),
}


@dataclass(frozen=True, slots=True)
class _Service:
    service: FeatureService
    join_keys: list[str]
    key_types: dict[str, pa.DataType | None]  # join key -> Arrow type (None: infer)
    feature_types: dict[str, pa.DataType | None]  # feature name -> Arrow type (None: infer)


class FeastFeatureLookup:
    """Looks features up in a Feast online store, one call per feature service and batch."""

    def __init__(self, store: FeatureStore) -> None:
        self._store = store
        self._services: dict[str, _Service] = {}

    def entity_keys(self, feature_service: str) -> list[str]:
        return list(self._service(feature_service).join_keys)

    def key_types(self, feature_service: str) -> dict[str, pa.DataType | None]:
        """The service's join keys with their Arrow types (for the inference table and for
        :func:`~lakeserve.features.lookup.key_problem`)."""
        return dict(self._service(feature_service).key_types)

    def feature_types(self, feature_service: str) -> dict[str, pa.DataType | None]:
        """The features the service returns, with their Arrow types (for the inference table)."""
        return dict(self._service(feature_service).feature_types)

    def get(self, feature_service: str, keys: pd.DataFrame) -> LookupResult:
        svc = self._service(feature_service)
        rows = key_tuples(keys[svc.join_keys])
        checks = [key_checker(svc.key_types.get(k)) for k in svc.join_keys]
        usable = [i for i, row in enumerate(rows) if _askable(row, checks)]
        values: dict[str, list[Any]] = {f: [None] * len(rows) for f in svc.feature_types}
        found = np.zeros(len(rows), dtype=np.bool_)
        if usable:
            columns = {k: [rows[i][j] for i in usable] for j, k in enumerate(svc.join_keys)}
            fetched, present = self._read(svc, columns)
            for name, column in fetched.items():
                for pos, value in zip(usable, column, strict=True):
                    values[name][pos] = value
            found[usable] = present
        frame = _typed_frame(values, svc.feature_types, len(rows))
        return LookupResult(features=frame, found=found)

    def _read(
        self, svc: _Service, columns: dict[str, list[Hashable | None]]
    ) -> tuple[dict[str, list[Any]], np.ndarray[Any, np.dtype[np.bool_]]]:
        try:
            response = self._store.get_online_features(features=svc.service, entity_rows=columns)
            as_dict = response.to_dict()
        except Exception as exc:  # feast raises many unrelated types; wrapped where they enter
            raise ComponentError("feast", f"online lookup of {svc.service.name!r} failed: {exc}") from exc
        return {f: as_dict[f] for f in svc.feature_types}, _present_mask(
            response, svc, len(as_dict[svc.join_keys[0]])
        )

    def _service(self, name: str) -> _Service:
        cached = self._services.get(name)
        if cached is None:
            cached = self._services[name] = self._describe(name)
        return cached

    def _describe(self, name: str) -> _Service:
        from feast.errors import FeastObjectNotFoundException

        try:
            service = self._store.get_feature_service(name, allow_cache=True)
            join_keys: list[str] = []
            key_types: dict[str, pa.DataType | None] = {}
            for projection in service.feature_view_projections:
                view = self._store.get_feature_view(projection.name, allow_registry_cache=True)
                join_keys += [k for k in view.join_keys if k not in join_keys]
                for column in view.entity_columns:
                    key_types.setdefault(column.name, _ARROW_TYPES.get(column.dtype.to_value_type().name))
        except FeastObjectNotFoundException as exc:
            raise ConfigError(f"feature service {name!r}: {exc}") from exc
        except Exception as exc:
            raise ComponentError("feast", f"reading feature service {name!r} failed: {exc}") from exc
        types = {
            f.name: _ARROW_TYPES.get(f.dtype.to_value_type().name)
            for p in service.feature_view_projections
            for f in p.features
        }
        return _Service(service=service, join_keys=join_keys, key_types=key_types, feature_types=types)


def _askable(row: tuple[Hashable | None, ...], checks: list[Callable[[Any], str | None]]) -> bool:
    """Whether the store may be asked for this key: every part present and a value of its type.
    The scoring core answers other keys 400 before it calls :meth:`FeastFeatureLookup.get`; for
    any other caller they are ``found=False``, never a store call that fails like an outage."""
    return all(v is not None and check(v) is None for v, check in zip(row, checks, strict=True))


def _present_mask(response: Any, svc: _Service, rows: int) -> np.ndarray[Any, np.dtype[np.bool_]]:
    """True for rows whose every feature came back ``PRESENT`` or ``NULL_VALUE``."""
    from feast.protos.feast.serving.ServingService_pb2 import FieldStatus

    missing = {FieldStatus.NOT_FOUND, FieldStatus.OUTSIDE_MAX_AGE}
    names = list(response.proto.metadata.feature_names.val)
    vectors = [v for n, v in zip(names, response.proto.results, strict=True) if n in svc.feature_types]
    if not vectors:
        return np.ones(rows, dtype=np.bool_)
    statuses = np.array([list(v.statuses) for v in vectors])
    return np.asarray(~np.isin(statuses, list(missing)).any(axis=0), dtype=np.bool_)


def _typed_frame(
    values: dict[str, list[Any]], types: dict[str, pa.DataType | None], rows: int
) -> pd.DataFrame:
    arrays = {
        name: pa.array(column, type=types[name]) if types[name] is not None else pa.array(column)
        for name, column in values.items()
    }
    return pa.table(arrays).to_pandas() if arrays else pd.DataFrame(index=range(rows))
