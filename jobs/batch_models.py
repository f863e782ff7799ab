"""The executor side of batch scoring: Arrow batches in, scored Arrow batches out, by the core.

:func:`score_partition` is what ``DataFrame.mapInArrow`` runs on every partition. It loads each
served model once per partition, from the registry at the version the driver pinned (an alias
that moves mid-job changes nothing), and scores every Arrow batch with the stream's own
:class:`~lakeserve.scoring.core.ScoringCore`: the same routing (sticky by the entity key, shadow
copies), the same entity-key checks, the same assembly (a row's field overrides a feature of
the same name when it is not null), the same signature checks, the same isolation of a record
the model cannot score, the same error codes. Each row is one request of one record; its
request id is a hash of its values, so a row without a routing key routes the same in every run.

The only difference is where the features come from: the row itself. They were joined point in
time from the offline store before (or were input columns, ``features_from_input``), so the
core's lookup is :class:`RowFeatures`, keyed by the row's position. A row whose every looked-up
feature is null had no feature row at its event time: ``RESOURCE_DOES_NOT_EXIST`` (404), as an
unknown key in the stream; a row without an event time is ``INVALID_PARAMETER_VALUE`` (400).

A row that cannot be scored is an output row with its status and message, never an exception,
unless the plan says ``fail_on_error``: then the first bad batch raises :class:`RowsFailed`,
Spark fails the job and nothing is committed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from lakeserve.errors import InvalidInput, LakeserveError
from lakeserve.features.lookup import PRIVATE_KEY, LookupResult
from lakeserve.jobs.batch_plan import EntityPlan, ScoringPlan
from lakeserve.scoring.core import ScoringCore
from lakeserve.scoring.models import MlflowServedModel, ServedModel
from lakeserve.scoring.records import Origin, RecordResult, RequestResult, ScoringRequest
from lakeserve.scoring.requests import ParsedRequest

ROW = f"{PRIVATE_KEY}row"  # the row's position in its batch: what RowFeatures is keyed by


class RowsFailed(LakeserveError):
    """Rows could not be scored and the run was asked to fail rather than record them."""


def score_partition(plan: ScoringPlan, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Load the plan's models once (at the first batch: empty partitions load nothing), then
    score every batch of this partition; the models are unloaded when the partition ends."""
    models: dict[str, ServedModel] = {}
    try:
        for batch in batches:
            if not models:
                for name, entity in plan.entities.items():
                    models[name] = MlflowServedModel.load(entity.entity, plan.mlflow)
            yield score_batch(plan, models, batch)
    finally:
        for model in models.values():
            model.unload()


def score_batch(plan: ScoringPlan, models: Mapping[str, ServedModel], batch: pa.RecordBatch) -> pa.RecordBatch:
    """One output row per input row (plus shadow copies), in input order, copies last."""
    frame = batch.to_pandas()
    rows = _plain_rows(frame)
    features = [f for f in plan.looked_up if f in frame.columns]
    core = ScoringCore(plan.endpoint, models, RowFeatures(plan, frame, features))
    requests = [_request(row, i) for i, row in enumerate(rows)]
    fields = [{k: v for k, v in row.items() if k not in features} | {ROW: i} for i, row in enumerate(rows)]
    no_time = _without_event_time(plan, frame, features)
    timed = [i for i in range(len(rows)) if not no_time[i]]
    results: list[RequestResult | None] = [None] * len(rows)
    params = dict(plan.params)  # one object for every row: the core checks it once (scoring/core.py)
    scored = core.score([requests[i] for i in timed], [ParsedRequest([fields[i]], params=params) for i in timed])
    for i, result in zip(timed, scored, strict=True):
        results[i] = result
    untimed = [i for i in range(len(rows)) if no_time[i]]
    no_event_time = InvalidInput(f"row lacks its event time {plan.timestamp_column!r}")
    refused = core.refuse([requests[i] for i in untimed], no_event_time)
    for i, result in zip(untimed, refused, strict=True):
        results[i] = result
    done = [r for r in results if r is not None]
    if plan.fail_on_error:
        _raise_first(done)
    return _output(plan, batch, done, features)


class RowFeatures:
    """The core's :class:`~lakeserve.features.lookup.FeatureLookup` over a batch's own feature
    columns: the service's join keys plus the row's position, answered from the row."""

    def __init__(self, plan: ScoringPlan, frame: pd.DataFrame, looked_up: Sequence[str]) -> None:
        self._services = {e.feature_service: e for e in plan.entities.values() if e.feature_service is not None}
        self._frame, self._looked_up = frame, list(looked_up)
        self._types = pa.Schema.from_pandas(frame, preserve_index=False)

    def entity_keys(self, feature_service: str) -> list[str]:
        return [*self._entity(feature_service).join_keys, ROW]

    def key_types(self, feature_service: str) -> dict[str, pa.DataType | None]:
        keys = self._entity(feature_service).join_keys
        types: dict[str, pa.DataType | None] = {k: _key_type(self._types, k) for k in keys}
        return {**types, ROW: pa.int64()}

    def get(self, feature_service: str, keys: pd.DataFrame) -> LookupResult:
        served = [f for f in self._entity(feature_service).features if f in self._looked_up]
        positions = keys[ROW].astype("int64").to_numpy()
        values = self._frame.iloc[positions][served].reset_index(drop=True)
        found = ~values.isna().all(axis=1).to_numpy() if served else np.ones(len(positions), np.bool_)
        return LookupResult(features=values, found=np.asarray(found, dtype=np.bool_))

    def _entity(self, feature_service: str) -> EntityPlan:
        return self._services[feature_service]


def _key_type(schema: pa.Schema, name: str) -> pa.DataType | None:
    if name not in schema.names:
        return None
    t = schema.field(name).type
    return t if pa.types.is_integer(t) or pa.types.is_string(t) or pa.types.is_large_string(t) else None


def _plain_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Each row as the JSON decoder would give it: Python values, missing values as None."""
    records: list[dict[str, Any]] = frame.astype(object).where(frame.notna(), None).to_dict("records")
    return [{str(k): (v.item() if isinstance(v, np.generic) else v) for k, v in r.items()} for r in records]


def _request(row: Mapping[str, Any], position: int) -> ScoringRequest:
    digest = hashlib.blake2b(repr(sorted(row.items(), key=lambda kv: kv[0])).encode("utf-8", "surrogatepass"),
                             digest_size=16).hexdigest()  # fmt: skip
    return ScoringRequest(f"batch-{digest}", b"", datetime.now(UTC), Origin("batch", offset=position))


def _without_event_time(plan: ScoringPlan, frame: pd.DataFrame, looked_up: Sequence[str]) -> np.ndarray[Any, Any]:
    if not looked_up or plan.timestamp_column is None or plan.timestamp_column not in frame.columns:
        return np.zeros(len(frame), np.bool_)
    return np.asarray(frame[plan.timestamp_column].isna().to_numpy(), dtype=np.bool_)


def _raise_first(results: Sequence[RequestResult]) -> None:
    bad = [r for r in results for rec in r.records if not rec.ok]
    if bad:
        first = next(rec for r in bad for rec in r.records if not rec.ok)
        raise RowsFailed(
            f"{len(bad)} row(s) could not be scored and fail_on_error is set; "
            f"first: {first.error_code}: {first.message}"
        )


def _output(
    plan: ScoringPlan, batch: pa.RecordBatch, results: Sequence[RequestResult], looked_up: Sequence[str]
) -> pa.RecordBatch:
    """Input columns, routing, predictions and status per record: answered rows, then shadow copies."""
    order = [(i, rec) for i, r in enumerate(results) for rec in r.records if not rec.shadow]
    order += [(i, rec) for i, r in enumerate(results) for rec in r.records if rec.shadow]
    base = batch.take(pa.array([i for i, _ in order], pa.int64()))
    columns = dict(zip(base.schema.names, base.columns, strict=True))
    for name in looked_up:  # the features the row's entity read; null for the others, as in the stream
        columns[name] = pa.array([rec.features.get(name) for _, rec in order], columns[name].type, from_pandas=True)
    records = [rec for _, rec in order]
    columns["served_entity"] = pa.array([r.served_entity for r in records], pa.string())
    columns["model_name"] = pa.array([r.model_name for r in records], pa.string())
    columns["model_version"] = pa.array([r.model_version for r in records], pa.string())
    columns["is_shadow"] = pa.array([r.shadow for r in records], pa.bool_())
    for f in plan.predictions:
        columns[f.name] = pa.array([_prediction(r, f.name, len(plan.predictions)) for r in records],
                                   from_pandas=True).cast(f.type)  # fmt: skip
    columns["status_code"] = pa.array([r.status_code for r in records], pa.int32())
    columns["error_code"] = pa.array([r.error_code for r in records], pa.string())
    columns["error_message"] = pa.array([r.message for r in records], pa.string())
    return pa.RecordBatch.from_pydict(columns)


def _prediction(record: RecordResult, column: str, columns: int) -> Any:
    if not record.ok or record.prediction is None:
        return None
    if isinstance(record.prediction, Mapping):
        return record.prediction.get(column)
    return record.prediction if columns == 1 else None
