"""The tree the service reads: ``stack``, ``kafka``, ``mlflow``, ``feast``, ``tables``, ``endpoint``,
``http``, ``metrics``, composed from the sections each package owns.

The pipelines take a :class:`ServiceSettings` (the jobs extend it, and the edge loads the whole
tree: :mod:`lakeserve.settings`). Unset locations are resolved here, once: every path absolute,
MLflow's store, Feast's repository and the tables in the state folder by default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from lakeserve.features.settings import FeastSettings
from lakeserve.monitoring.settings import TablesSettings
from lakeserve.pipelines.embedded.settings import StackSettings
from lakeserve.pipelines.http_settings import HttpSettings
from lakeserve.pipelines.kafka_settings import KafkaSettings
from lakeserve.pipelines.metrics_settings import MetricsSettings
from lakeserve.scoring.settings import EndpointSettings, MlflowSettings

MESSAGE_OVERHEAD_BYTES = 64 * 1024  # a message's key, headers (error text up to 4 kB) and batch framing


class ServiceSettings(BaseModel):
    """``stack``, ``kafka``, ``mlflow``, ``feast``, ``tables``, ``endpoint``, ``http`` and ``metrics``."""

    model_config = ConfigDict(extra="forbid")

    stack: StackSettings = Field(default_factory=StackSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    mlflow: MlflowSettings = Field(default_factory=MlflowSettings)
    feast: FeastSettings = Field(default_factory=FeastSettings)
    tables: TablesSettings = Field(default_factory=TablesSettings)
    endpoint: EndpointSettings = Field(default_factory=EndpointSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)

    @model_validator(mode="after")
    def _resolve_defaults(self) -> Self:
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

    @model_validator(mode="after")
    def _messages_fit_kafka(self) -> Self:
        """Every request the endpoint accepts and every answer it gives fits in one Kafka message."""
        limits = self.endpoint.limits
        largest = max(limits.max_request_bytes, limits.max_response_bytes)
        if self.kafka.max_message_bytes < largest + MESSAGE_OVERHEAD_BYTES:
            raise ValueError(
                f"kafka.max_message_bytes ({self.kafka.max_message_bytes}) must be at least the larger of "
                f"endpoint.limits.max_request_bytes and max_response_bytes ({largest}) plus "
                f"{MESSAGE_OVERHEAD_BYTES} bytes for the key, headers and batch framing"
            )
        return self

    @model_validator(mode="after")
    def _ports_apart(self) -> Self:
        """The metrics endpoint and the REST server can both run (``serve --http``): not on one port."""
        wildcard = {"0.0.0.0", "::", ""}
        same_host = self.metrics.host == self.http.host or {self.metrics.host, self.http.host} & wildcard
        if self.metrics.enabled and self.metrics.port == self.http.port and same_host:
            raise ValueError(
                f"metrics.port ({self.metrics.port}) is also http.port on {self.metrics.host}: "
                "give the metrics endpoint a port of its own, or 0 to turn it off"
            )
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


def write_settings(settings: ServiceSettings, path: Path) -> Path:
    """Write the resolved tree as YAML that :func:`load_settings` reads back to an equal tree, for
    subprocesses (notebooks, spark-submit). Secrets are written in clear: the file is 0600."""
    data = settings.model_dump(mode="python")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.write_text(yaml.safe_dump(yaml_ready(data), sort_keys=False))
    return path


def yaml_ready(value: Any) -> Any:
    """A tree dumped with ``model_dump(mode="python")`` as plain YAML values, which the settings
    load back from: secrets revealed, paths as strings, tuples as lists."""
    if isinstance(value, dict):
        return {k: yaml_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [yaml_ready(v) for v in value]
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, Path):
        return str(value)
    return value
