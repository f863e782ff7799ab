"""The ``endpoint`` section: what is served, how traffic is split, where it is logged.

The shape is the one Databricks Model Serving users write (``served_entities``,
``traffic_config.routes``, ``auto_capture_config``), plus the limits of this service.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

WorkloadType = Literal["CPU", "GPU", "GPU_SMALL", "GPU_MEDIUM", "GPU_LARGE"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServedEntity(_Section):
    """A registered MLflow model at one version (or alias), served under ``name``.

    ``workload_size`` and ``scale_to_zero_enabled`` are Databricks fields that lakeserve does not
    implement: every served entity is loaded in every worker and stays loaded, and concurrency is
    the number of workers (``lakeserve serve --workers N``), not a size per entity. Their
    Databricks defaults (``Small``, ``false``) are accepted, so Databricks endpoint configs load
    unchanged; any other value is refused when the settings load, naming the field, rather than
    accepted and silently not done.
    """

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    entity_name: str = Field(min_length=1, description="registered model name in MLflow")
    entity_version: str | None = Field(default=None, description="model version, e.g. '2'")
    alias: str | None = Field(default=None, description="registry alias, e.g. 'champion'")
    workload_type: WorkloadType = "CPU"
    workload_size: Literal["Small", "Medium", "Large"] = "Small"
    scale_to_zero_enabled: bool = False

    @field_validator("workload_size")
    @classmethod
    def _one_size(cls, value: str) -> str:
        if value != "Small":
            raise ValueError(
                f"not supported by lakeserve ({value!r}): concurrency is the number of workers "
                "(`lakeserve serve --workers N`), the same for every served entity; leave it 'Small' or omit it"
            )
        return value

    @field_validator("scale_to_zero_enabled")
    @classmethod
    def _always_up(cls, value: bool) -> bool:
        if value:
            raise ValueError(
                "not supported by lakeserve (workers keep every served entity loaded and never scale to "
                "zero); set it to false or omit it"
            )
        return value

    @model_validator(mode="after")
    def _one_reference(self) -> ServedEntity:
        if (self.entity_version is None) == (self.alias is None):
            raise ValueError("give exactly one of entity_version or alias")
        if self.entity_version is not None and not self.entity_version.isdigit():
            raise ValueError(f"entity_version must be a version number, got {self.entity_version!r}")
        return self

    @property
    def model_uri(self) -> str:
        ref = self.entity_version if self.entity_version is not None else f"@{self.alias}"
        sep = "/" if self.entity_version is not None else ""
        return f"models:/{self.entity_name}{sep}{ref}"

    @property
    def on_gpu(self) -> bool:
        return self.workload_type != "CPU"


class Route(_Section):
    served_model_name: str
    traffic_percentage: int = Field(ge=0, le=100)


class TrafficConfig(_Section):
    routes: list[Route] = Field(min_length=1)
    shadow_model_name: str | None = Field(
        default=None, description="served entity that scores a copy of every record, unanswered"
    )
    sticky_key: str | None = Field(
        default=None,
        description="record field that pins a caller to one entity; default: the entity key",
    )

    @model_validator(mode="after")
    def _sums_to_100(self) -> TrafficConfig:
        total = sum(r.traffic_percentage for r in self.routes)
        if total != 100:
            raise ValueError(f"traffic percentages must sum to 100, got {total}")
        names = [r.served_model_name for r in self.routes]
        if len(set(names)) != len(names):
            raise ValueError("each served_model_name may have only one route")
        return self


class AutoCaptureConfig(_Section):
    """Where the inference table lives: ``<tables.root>/<catalog>/<schema>/<prefix>_payload``."""

    enabled: bool = True
    catalog_name: str = Field(default="main", pattern=r"^[A-Za-z0-9_]+$")
    schema_name: str = Field(default="inference_logs", pattern=r"^[A-Za-z0-9_]+$")
    table_name_prefix: str = Field(default="lakeserve", pattern=r"^[A-Za-z0-9_]+$")
    sampling_fraction: float = Field(default=1.0, gt=0.0, le=1.0)
    payload_cap_bytes: int = Field(default=1024 * 1024, gt=0, description="bodies larger than this are logged as null")

    @property
    def table_name(self) -> str:
        return f"{self.table_name_prefix}_payload"


class Limits(_Section):
    max_request_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    max_response_bytes: int = Field(
        default=16 * 1024 * 1024,
        gt=0,
        description="an answer larger than this is replaced by a 500 MAX_RESPONSE_SIZE_EXCEEDED answer",
    )
    timeout_s: float = Field(default=60.0, gt=0)
    max_batch_size: int = Field(default=256, ge=1, le=100_000, description="the most requests in one micro-batch")
    max_batch_wait_ms: int = Field(
        default=20,
        ge=0,
        le=60_000,
        description="the longest a micro-batch keeps taking requests that arrive back to back after its "
        "first one; an upper bound, never a delay: a batch never waits for company",
    )


class EndpointSettings(_Section):
    name: str = Field(default="fraud-detection", pattern=r"^[A-Za-z0-9_-]+$")
    served_entities: list[ServedEntity] = Field(
        default_factory=lambda: [
            ServedEntity(name="champion", entity_name="card_fraud", alias="champion"),
            ServedEntity(name="challenger", entity_name="card_fraud", alias="challenger"),
        ],
        min_length=1,
        max_length=10,
    )
    traffic_config: TrafficConfig = Field(
        default_factory=lambda: TrafficConfig(
            routes=[
                Route(served_model_name="champion", traffic_percentage=80),
                Route(served_model_name="challenger", traffic_percentage=20),
            ]
        )
    )
    auto_capture_config: AutoCaptureConfig = Field(default_factory=AutoCaptureConfig)
    limits: Limits = Field(default_factory=Limits)

    @model_validator(mode="after")
    def _routes_name_entities(self) -> EndpointSettings:
        names = [e.name for e in self.served_entities]
        if len(set(names)) != len(names):
            raise ValueError(f"served entity names must be unique, got {names}")
        for route in self.traffic_config.routes:
            if route.served_model_name not in names:
                raise ValueError(
                    f"traffic_config route names unknown served entity {route.served_model_name!r} (known: {names})"
                )
        shadow = self.traffic_config.shadow_model_name
        if shadow is not None and shadow not in names:
            raise ValueError(f"shadow_model_name {shadow!r} is not a served entity (known: {names})")
        return self

    def entity(self, name: str) -> ServedEntity:
        for e in self.served_entities:
            if e.name == name:
                return e
        raise KeyError(name)


class MlflowSettings(_Section):
    """Tracking and registry; SQLite file and local artifacts under the state folder by default."""

    tracking_uri: str | None = Field(default=None, description="default sqlite:///<state_dir>/mlflow.db")
    registry_uri: str | None = Field(default=None, description="default: the tracking URI")
    artifact_root: str | None = Field(default=None, description="default <state_dir>/mlartifacts")
    ui_port: int | None = Field(default=5000, ge=1, le=65535, description="`lakeserve up` UI; null: none")
    experiment: str = "lakeserve"
