"""The executor side of batch scoring: Arrow batches in, scored Arrow batches out.

:func:`score_partition` is what ``DataFrame.mapInArrow`` runs on every partition. It loads each
served model once per partition, from the registry at the version the driver pinned (an alias
that moves mid-job changes nothing), then for every Arrow batch runs steps 3-6 of the stream
(DESIGN.md) on rows that already carry their features:

1. route each row with :class:`~lakeserve.scoring.routing.Router` on the sticky key (the same
   BLAKE2b buckets as the Kafka and HTTP paths; a row without a key routes by its content), and
   add a shadow copy when ``traffic_config.shadow_model_name`` is set;
2. check what the stream's lookup checks: a missing entity key or event time is
   ``INVALID_PARAMETER_VALUE`` (400); a row for which every looked-up feature of its entity's
   feature service is null had no feature row at that time: ``RESOURCE_DOES_NOT_EXIST`` (404);
3. :func:`~lakeserve.scoring.models.conform` the inputs to the model signature (400 per row);
4. predict per served entity; if a batch raises, its halves are retried down to single rows, so
   a poison row fails alone (``MODEL_ERROR``, 500).

A row that cannot be scored is an output row with its status and message, never an exception,
unless the plan says ``fail_on_error``: then the first bad batch raises :class:`RowsFailed`,
Spark fails the job and nothing is committed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from lakeserve.errors import InvalidInput, LakeserveError, NotFound, ScoringError
from lakeserve.jobs.batch_plan import EntityPlan, ScoringPlan
from lakeserve.scoring.models import MlflowServedModel, ServedModel, conform, predict_isolating
from lakeserve.scoring.routing import Router, key_string


class RowsFailed(LakeserveError):
    """Rows could not be scored and the run was asked to fail rather than record them."""


def score_partition(plan: ScoringPlan, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Load the plan's models once (at the first batch: empty partitions load nothing), then
    score every batch of this partition; the models are unloaded when the partition ends."""
    models: dict[str, ServedModel] = {}
    router = Router(plan.traffic)
    try:
        for batch in batches:
            if not models:
                for name, entity in plan.entities.items():
                    models[name] = MlflowServedModel.load(entity.entity, plan.mlflow)
            yield score_batch(plan, models, router, batch)
    finally:
        for model in models.values():
            model.unload()


def score_batch(
    plan: ScoringPlan, models: Mapping[str, ServedModel], router: Router, batch: pa.RecordBatch
) -> pa.RecordBatch:
    """One output row per input row (plus shadow copies), in input order, copies last."""
    frame = batch.to_pandas()
    entities = router.assign(_keys(frame, plan.sticky_key))
    rows = list(range(len(frame)))
    shadow = [False] * len(rows)
    if router.shadow is not None:
        copies = [i for i, s in enumerate(router.shadows(entities)) if s]
        rows, entities = rows + copies, entities + [router.shadow] * len(copies)
        shadow += [True] * len(copies)
    scored = _Scored(len(rows), plan)
    for name in dict.fromkeys(entities):
        at = np.flatnonzero(np.array(entities) == name)
        _score_entity(plan.entities[name], models[name], frame.iloc[[rows[i] for i in at]], at, scored, plan)
    if plan.fail_on_error:
        scored.raise_first()
    return scored.batch(batch.take(pa.array(rows)), entities, shadow, models)


def _keys(frame: pd.DataFrame, sticky: str | None) -> list[str]:
    """The routing key of each row; a row without one routes by its content (deterministic)."""
    if sticky is not None and sticky in frame.columns:
        keys = [key_string(v) for v in frame[sticky].tolist()]
    else:
        keys = [None] * len(frame)
    if all(k is not None for k in keys):
        return [str(k) for k in keys]
    rows = frame.astype(str).to_numpy().tolist()
    return [k if k is not None else repr(rows[i]) for i, k in enumerate(keys)]


def _score_entity(
    entity: EntityPlan, model: ServedModel, frame: pd.DataFrame, at: np.ndarray[Any, Any],
    scored: _Scored, plan: ScoringPlan,
) -> None:  # fmt: skip
    errors = _lookup_errors(entity, frame, plan)
    ready = [i for i, e in enumerate(errors) if e is None]
    conformed = conform(frame.iloc[ready].reset_index(drop=True), model.input_schema)
    for i, error in zip(ready, conformed.errors, strict=True):
        errors[i] = error
    ok = np.array([i for i, e in zip(ready, conformed.errors, strict=True) if e is None], dtype=np.int64)
    if len(ok):  # conformed.frame holds exactly these rows, cast
        out, failures = predict_isolating(model, conformed.frame)
        for i, failure in zip(ok, failures, strict=True):
            errors[i] = failure
        scored.predictions(at[ok], out)
    scored.errors(at, errors)


def _lookup_errors(entity: EntityPlan, frame: pd.DataFrame, plan: ScoringPlan) -> list[ScoringError | None]:
    """What the stream's feature lookup would refuse: no key, no event time, no feature row."""
    errors: list[ScoringError | None] = [None] * len(frame)
    if entity.feature_service is None:
        return errors
    looked_up = [f for f in entity.features if f in plan.looked_up]
    keys = [k for k in entity.join_keys if k in frame.columns]
    no_key = frame[keys].isna().any(axis=1).to_numpy() if keys else np.zeros(len(frame), np.bool_)
    no_key |= len(keys) < len(entity.join_keys)
    no_time = np.zeros(len(frame), np.bool_)
    if looked_up and plan.timestamp_column is not None:
        no_time = frame[plan.timestamp_column].isna().to_numpy()
    no_row = frame[looked_up].isna().all(axis=1).to_numpy() if looked_up else np.zeros(len(frame), np.bool_)
    for i in range(len(frame)):
        if no_key[i]:
            errors[i] = InvalidInput(f"row lacks entity key {list(entity.join_keys)} needed by "
                                     f"feature service {entity.feature_service!r}")  # fmt: skip
        elif no_time[i]:
            errors[i] = InvalidInput(f"row lacks its event time {plan.timestamp_column!r}")
        elif no_row[i]:
            key = ", ".join(f"{k}={frame[k].iloc[i]!r}" for k in entity.join_keys)
            errors[i] = NotFound(f"no features in {entity.feature_service!r} for {key} at the row's event time")
    return errors


class _Scored:
    """The extra output columns of one batch, filled per served entity."""

    def __init__(self, rows: int, plan: ScoringPlan) -> None:
        self._plan = plan
        self._status = np.full(rows, 200, dtype=np.int32)
        self._codes: list[str | None] = [None] * rows
        self._messages: list[str | None] = [None] * rows
        self._predictions = {f.name: [None] * rows for f in plan.predictions}

    def predictions(self, at: np.ndarray[Any, Any], out: pd.DataFrame) -> None:
        for name, column in self._predictions.items():
            if name in out.columns:
                for i, value in zip(at, out[name].tolist(), strict=True):
                    column[i] = value

    def errors(self, at: np.ndarray[Any, Any], errors: list[Any]) -> None:
        for i, error in zip(at, errors, strict=True):
            if error is not None:
                self._status[i], self._codes[i], self._messages[i] = error.status_code, error.error_code, error.message
                for column in self._predictions.values():
                    column[i] = None

    def raise_first(self) -> None:
        bad = np.flatnonzero(self._status != 200)
        if len(bad):
            first = bad[0]
            raise RowsFailed(
                f"{len(bad)} row(s) could not be scored and fail_on_error is set; first: "
                f"{self._codes[first]}: {self._messages[first]}"
            )

    def batch(
        self, base: pa.RecordBatch, entities: list[str], shadow: list[bool], models: Mapping[str, ServedModel]
    ) -> pa.RecordBatch:
        columns = dict(zip(base.schema.names, base.columns, strict=True))
        for name in self._plan.looked_up:  # features a row's entity did not use are null, as in the stream
            unused = pa.array([name not in self._plan.entities[e].features for e in entities])
            columns[name] = pc.if_else(unused, pa.scalar(None, columns[name].type), columns[name])
        columns["served_entity"] = pa.array(entities, pa.string())
        columns["model_name"] = pa.array([models[e].model_name for e in entities], pa.string())
        columns["model_version"] = pa.array([models[e].model_version for e in entities], pa.string())
        columns["is_shadow"] = pa.array(shadow, pa.bool_())
        for f in self._plan.predictions:
            columns[f.name] = pa.array(self._predictions[f.name], from_pandas=True).cast(f.type)
        columns["status_code"] = pa.array(self._status, pa.int32())
        columns["error_code"] = pa.array(self._codes, pa.string())
        columns["error_message"] = pa.array(self._messages, pa.string())
        return pa.RecordBatch.from_pydict(columns)
