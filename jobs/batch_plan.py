"""What the driver decides once and ships to every executor: the batch scoring plan.

:func:`load_plan` loads each routed (and shadow) served entity on the driver, once, to pin its
registry version (an alias is resolved now), read its feature service and entity keys from the
model metadata and its prediction columns from the output signature; a model that cannot load,
or that refuses the run's params (``--params``, checked against its params schema), fails the
run before any Spark work starts. The resulting :class:`ScoringPlan` is plain,
picklable data: executors load the models again from the registry at the pinned versions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from lakeserve.errors import ConfigError, InvalidInput
from lakeserve.scoring.models import MlflowServedModel, ServedModel
from lakeserve.scoring.settings import EndpointSettings, Limits, MlflowSettings, ServedEntity

BATCH_TIMEOUT_S = 7 * 86400.0  # a batch record has no caller waiting: the run's own time is the limit


def batch_endpoint(endpoint: EndpointSettings, pinned: Mapping[str, ServedEntity]) -> EndpointSettings:
    """The endpoint the batch job serves: its routed and shadow entities at their pinned versions."""
    limits = Limits.model_validate({**endpoint.limits.model_dump(), "timeout_s": BATCH_TIMEOUT_S})
    served = [pinned[e.name] for e in endpoint.served_entities if e.name in pinned]
    return EndpointSettings.model_validate(
        {**endpoint.model_dump(), "served_entities": [e.model_dump() for e in served], "limits": limits.model_dump()}
    )

# Columns the job adds to every output row (besides the prediction columns and scored_at).
ROUTING_FIELDS = [
    pa.field("served_entity", pa.string()),
    pa.field("model_name", pa.string()),
    pa.field("model_version", pa.string()),
    pa.field("is_shadow", pa.bool_()),
]
STATUS_FIELDS = [
    pa.field("status_code", pa.int32()),
    pa.field("error_code", pa.string()),
    pa.field("error_message", pa.string()),
]
SCORED_AT = "scored_at"


@dataclass(frozen=True, slots=True)
class EntityPlan:
    """One served entity at a pinned version, with the features its service provides."""

    entity: ServedEntity  # entity_version pinned, alias cleared
    feature_service: str | None
    join_keys: tuple[str, ...] = ()
    features: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ScoringPlan:
    endpoint: EndpointSettings  # the served entities pinned, what the executors' scoring core serves
    entities: Mapping[str, EntityPlan]
    mlflow: MlflowSettings
    sticky_key: str | None
    predictions: pa.Schema  # the prediction columns, union over the entities
    looked_up: tuple[str, ...] = ()  # feature columns that came from the offline store
    timestamp_column: str | None = None
    fail_on_error: bool = False
    params: Mapping[str, Any] = field(default_factory=dict)  # every row's request params


@dataclass(frozen=True, slots=True)
class LoadedModels:
    """What the driver learned from loading the served entities once."""

    pinned: dict[str, ServedEntity]
    feature_services: dict[str, str | None]
    sticky_key: str | None
    predictions: pa.Schema
    versions: dict[str, str]  # served entity -> "model_name/version"


def load_models(
    endpoint: EndpointSettings, mlflow: MlflowSettings, params: Mapping[str, Any] | None = None
) -> LoadedModels:
    """Load every routed and shadow entity once on the driver; pin versions; check that each takes
    ``params`` (ConfigError naming the entity and the param); unload again."""
    wanted = [r.served_model_name for r in endpoint.traffic_config.routes]
    shadow = endpoint.traffic_config.shadow_model_name
    wanted += [shadow] if shadow is not None and shadow not in wanted else []
    models = {}
    try:
        for name in wanted:
            models[name] = MlflowServedModel.load(endpoint.entity(name), mlflow)
            _check_params(models[name], params or {})
        return LoadedModels(
            pinned={n: _pinned(endpoint.entity(n), m.model_version) for n, m in models.items()},
            feature_services={n: m.feature_service for n, m in models.items()},
            sticky_key=endpoint.traffic_config.sticky_key or _entity_key(models, wanted),
            predictions=_prediction_schema(models),
            versions={n: f"{m.model_name}/{m.model_version}" for n, m in models.items()},
        )
    finally:
        for model in models.values():
            model.unload()


def _check_params(model: ServedModel, params: Mapping[str, Any]) -> None:
    try:
        model.check_params(params)
    except InvalidInput as exc:
        raise ConfigError(f"--params: {exc.message}") from None


def _pinned(entity: ServedEntity, version: str) -> ServedEntity:
    return ServedEntity.model_validate({**entity.model_dump(), "entity_version": version, "alias": None})


def _entity_key(models: Mapping[str, ServedModel], names: Sequence[str]) -> str | None:
    """The first entity key a routed model records: what the stream routes by (scoring/core.py)."""
    for name in names:
        if models[name].entity_keys:
            return models[name].entity_keys[0]
    return None


def _prediction_schema(models: Mapping[str, ServedModel]) -> pa.Schema:
    fields: dict[str, pa.Field] = {}
    for name, model in models.items():
        schema = model.output_schema
        if schema is None:
            raise ConfigError(
                f"served entity {name!r} ({model.model_name}/{model.model_version}) has no output signature "
                f"of named columns; batch scoring needs one to type its prediction columns"
            )
        for f in schema:
            known = fields.setdefault(f.name, f.with_nullable(True))
            if known.type != f.type:
                raise ConfigError(
                    f"prediction column {f.name!r} is {known.type} for one served entity and {f.type} for {name!r}"
                )
    return pa.schema(list(fields.values()))
