"""The one settings tree of lakeserve, loaded at the edge: the CLI and the jobs' entry points.

:class:`Settings` is the whole tree (:class:`~lakeserve.jobs.settings.JobSettings`: the service's
sections and the jobs'), read by pydantic-settings. It is loaded once with :func:`load_settings` and
passed down; the layers below take the part of it they read (``ServiceSettings``, ``JobSettings``),
and no other module reads the environment. Sources, strongest first:

1. ``LAKESERVE_...`` environment variables, nested with ``__``
   (``LAKESERVE_KAFKA__GROUP_ID=scorers``, ``LAKESERVE_SPARK__MASTER=spark://host:7077``);
2. the YAML file (``--config``, else ``$LAKESERVE_CONFIG``, else ``./lakeserve.yaml`` if present);
3. the defaults of each section, which run the demo on the embedded stack.

A value that breaks a rule raises :class:`~lakeserve.errors.ConfigError` naming the field.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from lakeserve.errors import ConfigError, format_validation_error
from lakeserve.jobs.settings import JobSettings
from lakeserve.monitoring.table_storage import table_scheme

DEFAULT_CONFIG_FILE = Path("lakeserve.yaml")


class Settings(BaseSettings, JobSettings):
    """The whole tree: ``stack``, ``kafka``, ``mlflow``, ``feast``, ``tables``, ``endpoint``, ``http``,
    ``metrics``, and the jobs' ``spark``, ``monitor``, ``ab`` and ``schedule``."""

    model_config = SettingsConfigDict(
        env_prefix="LAKESERVE_", env_nested_delimiter="__", extra="forbid", nested_model_default_partial_update=True
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML file arrives as init values; the environment overrides it.
        return (env_settings, init_settings)


def load_settings(
    path: Path | str | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Load the tree once: YAML file, then environment, then ``overrides`` (for tests and CLIs)."""
    source = _config_path(path, os.environ)
    data = _read_yaml(source) if source is not None else {}
    if overrides:
        data = _deep_merge(data, dict(overrides))
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def artifact_store_env(settings: Settings) -> dict[str, str]:
    """What MLflow (boto3) needs to reach ``mlflow.artifact_root`` when it is on the tables' S3 store.

    MLflow reads S3 artifacts with boto3, which takes its endpoint and credentials from the
    environment only (``MLFLOW_S3_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...). When the artifact
    root is an ``s3://`` location and so is ``tables.root``, the tables' storage options give those
    variables; the edge sets the ones not already set, so a process and the workers it starts load
    models from the same store they write tables to. Elsewhere: nothing (boto3's own chain).
    """
    root, artifacts = settings.tables.root or "", settings.mlflow.artifact_root or ""
    if table_scheme(artifacts) != "s3" or table_scheme(root) != "s3":
        return {}
    options = {k.upper(): v.get_secret_value() for k, v in settings.tables.storage_options.items()}
    names = {
        "AWS_ENDPOINT_URL": "MLFLOW_S3_ENDPOINT_URL",
        "AWS_ENDPOINT": "MLFLOW_S3_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN": "AWS_SESSION_TOKEN",
        "AWS_REGION": "AWS_DEFAULT_REGION",
        "AWS_DEFAULT_REGION": "AWS_DEFAULT_REGION",
    }
    env: dict[str, str] = {}
    for option, variable in names.items():
        if option in options:
            env.setdefault(variable, options[option])
    return env


def _config_path(path: Path | str | None, env: Mapping[str, str]) -> Path | None:
    if path is not None:
        return Path(path)
    if env.get("LAKESERVE_CONFIG"):
        return Path(env["LAKESERVE_CONFIG"])
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read settings file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"settings file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"settings file {path} must hold a mapping at the top, got {type(data).__name__}")
    return data


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out
