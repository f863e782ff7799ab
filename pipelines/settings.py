"""The one settings tree of lakeserve, composed from the sections each package owns.

Loaded once at the edge (the CLI, a job's entry point) with :func:`load_settings` and passed
down; no other module reads the environment. Sources, strongest first:

1. ``LAKESERVE_...`` environment variables, nested with ``__``
   (``LAKESERVE_KAFKA__GROUP_ID=scorers``, ``LAKESERVE_SPARK__MASTER=spark://host:7077``);
2. the YAML file (``--config``, else ``$LAKESERVE_CONFIG``, else ``./lakeserve.yaml`` if present);
3. the defaults below, which run the demo on the embedded stack.

A value that breaks a rule raises :class:`~lakeserve.errors.ConfigError` naming the field.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from lakeserve.errors import ConfigError
from lakeserve.features.settings import FeastSettings
from lakeserve.jobs.settings import AbSettings, MonitorSettings, ScheduleSettings, SparkSettings
from lakeserve.monitoring.settings import TablesSettings
from lakeserve.pipelines.http_settings import HttpSettings
from lakeserve.pipelines.kafka_settings import KafkaSettings
from lakeserve.scoring.settings import EndpointSettings, MlflowSettings

DEFAULT_CONFIG_FILE = Path("lakeserve.yaml")


class StackSettings(BaseModel):
    """Where the embedded components keep their state, and the ports they listen on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    state_dir: Path = Field(default=Path(".lakeserve"), description="data, logs, pid files")
    cache_dir: Path = Field(default=Path("~/.cache/lakeserve"), description="resolved jars, shared between checkouts")
    kafka_version: str = Field(default="4.1.1", pattern=r"^4\.\d+\.\d+$")
    kafka_port: int = Field(default=9092, ge=1, le=65535)
    kafka_controller_port: int = Field(default=9093, ge=1, le=65535)
    kafka_heap: str = "512m"
    redis_port: int = Field(default=6379, ge=1, le=65535)

    @model_validator(mode="after")
    def _distinct_ports(self) -> StackSettings:
        if self.kafka_port == self.kafka_controller_port:
            raise ValueError("kafka_port and kafka_controller_port must differ")
        return self


class Settings(BaseSettings):
    """The whole tree: ``stack``, ``kafka``, ``spark``, ``mlflow``, ``feast``, ``tables``, ``endpoint``,
    ``http``, and the jobs' ``monitor``, ``ab`` and ``schedule``."""

    model_config = SettingsConfigDict(
        env_prefix="LAKESERVE_", env_nested_delimiter="__", extra="forbid", nested_model_default_partial_update=True
    )

    stack: StackSettings = Field(default_factory=StackSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    spark: SparkSettings = Field(default_factory=SparkSettings)
    mlflow: MlflowSettings = Field(default_factory=MlflowSettings)
    feast: FeastSettings = Field(default_factory=FeastSettings)
    tables: TablesSettings = Field(default_factory=TablesSettings)
    endpoint: EndpointSettings = Field(default_factory=EndpointSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    monitor: MonitorSettings = Field(default_factory=MonitorSettings)
    ab: AbSettings = Field(default_factory=AbSettings)
    schedule: ScheduleSettings = Field(default_factory=ScheduleSettings)

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

    @model_validator(mode="after")
    def _resolve_defaults(self) -> Settings:
        """Make paths absolute and point unset locations into the state folder."""
        state = self.stack.state_dir.expanduser().resolve()
        self.stack = self.stack.model_copy(
            update={"state_dir": state, "cache_dir": self.stack.cache_dir.expanduser().resolve()}
        )
        tracking = self.mlflow.tracking_uri or f"sqlite:///{state / 'mlflow.db'}"
        self.mlflow = self.mlflow.model_copy(
            update={
                "tracking_uri": tracking,
                "registry_uri": self.mlflow.registry_uri or tracking,
                "artifact_root": self.mlflow.artifact_root or str(state / "mlartifacts"),
            }
        )
        if self.feast.repo_path is None:
            self.feast = self.feast.model_copy(update={"repo_path": state / "feast"})
        if self.tables.root is None:
            self.tables = self.tables.model_copy(update={"root": str(state / "tables")})
        return self

    @property
    def inference_table_uri(self) -> str:
        """Location of the endpoint's inference table, from ``auto_capture_config``."""
        cap = self.endpoint.auto_capture_config
        return f"{str(self.tables.root).rstrip('/')}/{cap.catalog_name}/{cap.schema_name}/{cap.table_name}"

    def table_uri(self, name: str) -> str:
        """Location of another table beside the inference table (metrics, batch outputs)."""
        cap = self.endpoint.auto_capture_config
        return f"{str(self.tables.root).rstrip('/')}/{cap.catalog_name}/{cap.schema_name}/{name}"


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


def write_settings(settings: Settings, path: Path) -> Path:
    """Write the resolved tree as YAML that :func:`load_settings` reads back to an equal tree, for
    subprocesses (notebooks, spark-submit). Secrets are written in clear: the file is 0600."""
    data = settings.model_dump(mode="python")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.write_text(yaml.safe_dump(_plain(data), sort_keys=False))
    return path


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, Path):
        return str(value)
    return value


def format_validation_error(exc: ValidationError, source: Path | None = None) -> str:
    """One line per broken rule: ``endpoint.traffic_config: traffic percentages must sum to 100``."""
    where = f" in {source}" if source is not None else ""
    lines = [f"invalid settings{where}:"]
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


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
