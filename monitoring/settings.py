"""The sections monitoring owns: ``tables`` (where Delta tables live, how the service batches its
appends), ``monitor`` (the InferenceLog profile) and ``ab`` (the A/B analysis)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from lakeserve.monitoring.table_storage import table_scheme
from lakeserve.monitoring.windows import parse_granularity


class TablesSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    root: str | None = Field(
        default=None,
        description="root of all tables: a path, or s3://, gs://, abfss:// as delta-rs and Spark read "
        "them; default <state_dir>/tables",
    )
    storage_options: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="delta-rs storage options for tables.root (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, "
        "AWS_SECRET_ACCESS_KEY, AWS_REGION, ...), also mapped to Spark's S3A/ABFS/GCS settings; never printed",
    )
    flush_rows: int = Field(default=5000, ge=1, description="append once this many rows wait")
    flush_interval_ms: int = Field(default=1000, ge=0, description="...or once the oldest waited this long")
    commit_conflict_retries: int = Field(
        default=10, ge=0, description="appends that lost to a concurrent commit are tried again this many times"
    )
    max_buffered_rows: int = Field(
        default=200_000,
        ge=1,
        description="REST rows waiting while the table is down; beyond this the oldest are dropped and counted "
        "(Kafka rows are never dropped: consumption pauses instead)",
    )

    @field_validator("root")
    @classmethod
    def _known_scheme(cls, root: str | None) -> str | None:
        if root is not None:
            table_scheme(root)  # raises ValueError naming the schemes it knows
        return root

    @field_validator("storage_options")
    @classmethod
    def _option_names(cls, options: dict[str, SecretStr]) -> dict[str, SecretStr]:
        blank = [k for k in options if not k.strip()]
        if blank:
            raise ValueError("an option has an empty name")
        return options

    def delta_storage_options(self) -> dict[str, str] | None:
        """The options as delta-rs takes them (revealed), or None when none are set."""
        return {k: v.get_secret_value() for k, v in self.storage_options.items()} or None


class MonitorSettings(BaseModel):
    """The ``monitor`` section: an InferenceLog profile of the inference table (Lakehouse Monitoring shape).

    Columns named here are columns of the inference table; ``label_col`` is read from
    ``labels_table`` when one is given (joined as ``labels_join`` says), else from the
    inference table itself. ``model_id_col`` None (the default) gives each model version its
    own id, ``<served_entity>@<model_version>``, so that a window in which an alias moved holds
    two models, not a mix.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    timestamp_col: str = "timestamp"
    model_id_col: str | None = Field(
        default=None,
        description="column naming the model; None: '<served_entity>@<model_version>' (each version apart)",
    )
    prediction_col: str = "prediction"
    label_col: str | None = Field(default=None, description="ground truth; enables model-quality metrics")
    prediction_proba_col: str | None = Field(default=None, description="score of the positive class")
    problem_type: Literal["classification", "regression"] = "classification"
    positive_label: str | None = Field(
        default=None, description="binary classification: the positive class; None: macro averages"
    )
    granularities: list[str] = Field(
        default_factory=lambda: ["1 day"],
        min_length=1,
        description="window lengths: '<n> minute(s)|hour(s)|day(s)', '1 week' or '1 month' (as Databricks)",
    )
    columns: list[str] | None = Field(
        default=None, description="columns to profile; default: every model input and the prediction"
    )
    categorical_columns: list[str] = Field(
        default_factory=list, description="numeric columns to treat as categories (ids, codes)"
    )
    slicing_exprs: list[str] = Field(default_factory=list, description="SQL expressions, e.g. 'amount > 100'")
    baseline_table: str | None = Field(default=None, description="URI of a Delta table with the same columns")
    labels_table: str | None = Field(default=None, description="URI of a Delta table of late labels")
    labels_join: Literal["request_id", "client_request_id", "key_as_of"] = Field(
        default="request_id",
        description="how labels find their records: (request_id, record_index); client_request_id "
        "(+ record_index when the labels have it); key_as_of: labels_key_cols and the latest record "
        "at or before the label's labels_timestamp_col, within labels_tolerance_s",
    )
    labels_key_cols: list[str] = Field(
        default_factory=list, description="key_as_of: entity key column(s), in both tables"
    )
    labels_timestamp_col: str = Field(default="timestamp", description="key_as_of: the label's event time")
    labels_tolerance_s: float = Field(
        default=86_400.0, gt=0, description="key_as_of: a record scored longer before the label is not its record"
    )
    output_prefix: str | None = Field(
        default=None, description="metrics tables: <prefix>_profile_metrics, _drift_metrics; default: table"
    )
    include_errors: bool = Field(default=False, description="profile rows whose status_code is not 200")
    drift_p_value: float = Field(default=0.01, gt=0, lt=1, description="KS / chi-square significance level")
    psi_threshold: float = Field(default=0.2, gt=0)
    wasserstein_threshold: float = Field(default=0.2, gt=0, description="on Wasserstein / reference std")
    js_threshold: float = Field(default=0.1, gt=0, le=1)
    min_rows: int = Field(default=500, ge=1, description="pairs with fewer rows on a side are never flagged")
    psi_bins: int = Field(default=10, ge=2, le=100)
    drift_exact_max_rows: int = Field(
        default=200_000,
        ge=1,
        description="windows (and a baseline) with more rows get binned KS/Wasserstein/PSI, with error bounds",
    )
    drift_cells: int = Field(default=2_000, ge=10, le=100_000, description="cells per numeric column when binned")
    max_categories: int = Field(default=100, ge=2, description="rarer categories count as '__other__'")
    quantile_accuracy: int = Field(default=10_000, ge=100, description="percentile_approx accuracy")
    distinct_rsd: float = Field(default=0.02, gt=0, lt=0.4, description="approx_count_distinct error")
    evidently: bool = Field(default=True, description="an Evidently report for each model's latest window")
    evidently_max_rows: int = Field(default=50_000, ge=100, description="rows sampled per side for Evidently")

    @model_validator(mode="after")
    def _check(self) -> MonitorSettings:
        for g in self.granularities:
            parse_granularity(g)
        if self.prediction_proba_col is not None and self.problem_type != "classification":
            raise ValueError("prediction_proba_col is for classification only")
        self._check_labels_join()
        return self

    def _check_labels_join(self) -> None:
        """Refuse a join that cannot run, or settings a join would silently ignore."""
        mode = self.labels_join
        if mode != "request_id" and (self.labels_table is None or self.label_col is None):
            raise ValueError(f"labels_join {mode!r} joins labels_table's label_col: give both")
        fields = type(self).model_fields
        as_of_only = [  # compared with the defaults: a dumped and reloaded tree names every field
            n
            for n in ("labels_key_cols", "labels_timestamp_col", "labels_tolerance_s")
            if getattr(self, n) != fields[n].get_default(call_default_factory=True)
        ]
        if mode != "key_as_of" and as_of_only:
            raise ValueError(f"{as_of_only[0]} is for labels_join 'key_as_of', not {mode!r}")
        if mode != "key_as_of":
            return
        keys = self.labels_key_cols
        if not keys:
            raise ValueError("labels_key_cols: labels_join 'key_as_of' needs the entity key column(s)")
        if len(set(keys)) != len(keys):
            raise ValueError(f"labels_key_cols: a column is named twice in {keys}")
        clash = {self.labels_timestamp_col, self.label_col} & set(keys)
        if clash:
            raise ValueError(f"labels_key_cols: {sorted(c for c in clash if c)} is the label or its time")


class AbSettings(BaseModel):
    """The ``ab`` section: compare served entities over a period of the inference table.

    The unit of analysis is the routing key (``cluster_key``): routing is sticky per key, so
    the tests treat keys, not records, as independent; ``alpha`` and ``power`` set the minimum
    detectable effect each comparison states."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cluster_key: str | None = Field(
        default=None,
        min_length=1,
        description="inference-table column holding the routing key (traffic_config.sticky_key or the "
        "served models' entity key, e.g. customer_id); default: the key the endpoint routes by "
        "(traffic_config.sticky_key, else the entity key its models record), else request_id",
    )
    control: str | None = Field(default=None, description="control entity; default: the most traffic")
    period_days: float = Field(default=7.0, gt=0, description="period ending now (or at --end)")
    prediction_col: str = "prediction"
    prediction_proba_col: str | None = None
    label_col: str | None = None
    labels_table: str | None = None
    positive_label: str = "1"
    include_shadow: bool = False
    alpha: float = Field(default=0.05, gt=0, lt=1)
    power: float = Field(default=0.8, gt=0, lt=1)
    bootstrap_resamples: int = Field(default=1000, ge=100)
    bootstrap_max_rows: int = Field(
        default=20_000, ge=100, description="rows per arm for the bootstrap, taken as whole keys"
    )
    seed: int = 0
    output_table: str | None = Field(default=None, description="default: <table>_ab_results")
