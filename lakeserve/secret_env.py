"""A settings tree in two parts for a deployment: the YAML without its secrets, and the secrets as
``LAKESERVE_...`` environment variables, which :func:`~lakeserve.settings.load_settings` reads over
the YAML (pydantic-settings, nested with ``__``). Loaded together they give back the same tree.

A secret is what :func:`lakeserve.redact.redact` masks: ``SecretStr`` values, the values of
secret-named keys, everything under ``storage_options``, a location's password. So a value is in
the environment part exactly when ``lakeserve config show`` would not print it.

One variable per secret setting: ``kafka.sasl_password`` becomes ``LAKESERVE_KAFKA__SASL_PASSWORD``.
A secret inside a mapping or a list (``stack.kafka_scram_users``, ``spark.conf``, ``schedule.jobs``)
travels in the variable of the field that holds it, as JSON: only the secret entries of a mapping
(pydantic-settings merges them into the YAML's mapping, and keeps the case of their keys, which it
would lower in a variable's name), a list whole (which then leaves the YAML).
"""

from __future__ import annotations

import json
import types
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel

from lakeserve.pipelines.settings import yaml_ready
from lakeserve.redact import redact
from lakeserve.settings import Settings

ENV_PREFIX = "LAKESERVE_"
Path_ = tuple[str | int, ...]  # keys and list indexes from the root of the tree


@dataclass(frozen=True)
class SplitSettings:
    """``public``: the YAML tree without a secret; ``env``: variable name -> value;
    ``secret_values``: every secret value itself (what a ConfigMap must not hold)."""

    public: dict[str, Any]
    env: dict[str, str]
    secret_values: tuple[str, ...]

    def env_name(self, *field: str) -> str | None:
        """The variable that carries the setting ``field`` (e.g. ``"kafka", "sasl_password"``)."""
        name = env_name(field)
        return name if name in self.env else None


def env_name(field: tuple[str, ...]) -> str:
    return ENV_PREFIX + "__".join(part.upper() for part in field)


def split_settings(settings: Settings) -> SplitSettings:
    """The public YAML tree and the secret variables of ``settings`` (see the module docstring)."""
    raw = settings.model_dump(mode="python")
    plain: dict[str, Any] = yaml_ready(raw)
    public: dict[str, Any] = yaml_ready(raw)  # a second copy, which loses the secrets
    carried: dict[tuple[str, ...], Any] = {}
    values = []
    for path in _secret_paths(redact(raw), raw, ()):
        values.append(str(_at(plain, path)))
        field = _field_path(Settings, path)
        moved = _carried(plain, path, len(field))
        _remove(public, moved)
        if moved == field:
            carried[field] = _at(plain, field)
        else:
            sparse = carried.setdefault(field, {})
            _put(sparse, moved[len(field) :], _at(plain, moved))
    env = {env_name(field): _env_value(value) for field, value in carried.items()}
    return SplitSettings(public, env, tuple(dict.fromkeys(values)))


def _secret_paths(masked: Any, raw: Any, path: Path_) -> Iterator[Path_]:
    """Where the masked tree differs from the dumped one: each leaf that redaction hides."""
    if isinstance(raw, dict):
        for key, value in raw.items():
            yield from _secret_paths(masked[key], value, (*path, key))
    elif isinstance(raw, list | tuple):
        for index, value in enumerate(raw):
            yield from _secret_paths(masked[index], value, (*path, index))
    elif masked != raw:
        yield path


def _field_path(model: type[BaseModel], path: Path_) -> tuple[str, ...]:
    """The longest start of ``path`` made of model fields: what a variable's name can address."""
    found: list[str] = []
    current: type[BaseModel] | None = model
    for part in path:
        if current is None or not isinstance(part, str) or part not in current.model_fields:
            break
        found.append(part)
        current = _model_in(current.model_fields[part].annotation)
    return tuple(found)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model class of a field's annotation (``X`` or ``X | None``), None for anything else."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (Union, types.UnionType):
        for arg in get_args(annotation):
            model = _model_in(arg)
            if model is not None:
                return model
    return None


def _carried(plain: dict[str, Any], path: Path_, start: int) -> Path_:
    """What moves to the environment for the secret at ``path``: the leaf, or the first list
    between the addressed field (``path[:start]``) and the leaf, whole."""
    for end in range(start, len(path)):
        if isinstance(_at(plain, path[:end]), list):
            return path[:end]
    return path


def _at(tree: Any, path: Path_) -> Any:
    for part in path:
        tree = tree[part]
    return tree


def _remove(tree: dict[str, Any], path: Path_) -> None:
    parent = _at(tree, path[:-1])
    if path[-1] in parent:  # a list taken whole is removed once, for its first secret
        del parent[path[-1]]


def _put(tree: dict[Any, Any], path: Path_, value: Any) -> None:
    for part in path[:-1]:
        tree = tree.setdefault(part, {})
    tree[path[-1]] = value


def _env_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
