"""Quality per model version, and labels found by request id, client request id or entity key and
time, on real Spark + Delta.

The planted table: one hour of 1,000 two-record requests to the served entity ``champion``, whose
alias moves from version 1 to version 2 at half past: version 1 predicts every label, version 2
gets every label wrong. Mixed into one model, the window's accuracy would read 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake
from pydantic import ValidationError

from lakeserve.errors import ConfigError
from lakeserve.jobs.monitor import MonitorSummary, MonitorTables, run_monitor
from lakeserve.monitoring.settings import MonitorSettings
from lakeserve.monitoring.synthetic import EntitySpec, SyntheticSpec, synthetic_inference

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

START = datetime(2025, 3, 1, tzinfo=UTC)
REQUESTS = 1_000
STEP = timedelta(seconds=3.6)  # requests evenly over the hour
MOVED_AT = REQUESTS // 2  # the first request served by version 2
CUSTOMERS = 37  # the entity key: record i of the table is customer i % 37
QUALITY = ["count", "labeled_count", "accuracy", "precision", "recall", "f1"]


@dataclass
class Planted:
    inference: str
    root: Path
    frame: dict[str, np.ndarray]  # request, record, client id, customer, timestamp, label per record


def _table() -> tuple[pa.Table, dict[str, np.ndarray]]:
    spec = SyntheticSpec(
        rows=2 * REQUESTS,
        windows=1,
        numeric=1,
        categorical=1,
        entities=[EntitySpec("champion", 1.0, error_rate=0.0)],
        seed=11,
    )
    table, _ = synthetic_inference(spec)
    n = table.num_rows
    request = np.arange(n) // 2
    record = (np.arange(n) % 2).astype(np.int32)
    ts = np.array([START + STEP * int(j) for j in request])
    label = np.random.default_rng(11).integers(0, 2, n)
    version = np.where(request < MOVED_AT, "1", "2")
    prediction = np.where(version == "1", label, 1 - label)
    customer = np.arange(n) % CUSTOMERS
    stamps = pa.array(ts, pa.timestamp("us", tz="UTC"))
    replaced = {
        "request_id": pa.array([f"req-{j}" for j in request]),
        "client_request_id": pa.array([f"client-{j}" for j in request]),
        "record_index": pa.array(record),
        "timestamp": stamps,
        "timestamp_ms": pa.array([int(t.timestamp() * 1000) for t in ts]),
        "date": stamps.cast(pa.date32()),
        "model_version": pa.array(version),
        "prediction": pa.array(prediction.astype(np.int64)),
    }
    for name, values in replaced.items():
        table = table.set_column(table.schema.get_field_index(name), table.schema.field(name), values)
    table = table.append_column(pa.field("customer_id", pa.int64()), pa.array(customer.astype(np.int64)))
    frame = {
        "request": request,
        "record": record,
        "customer": customer,
        "ts": ts,
        "label": label,
    }
    return table, frame


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Planted:
    root = tmp_path_factory.mktemp("versions")
    table, frame = _table()
    write_deltalake(str(root / "payload"), table, partition_by=["date"])
    return Planted(str(root / "payload"), root, frame)


def _labels(planted: Planted, name: str, columns: dict[str, list[Any]]) -> str:
    uri = str(planted.root / name)
    write_deltalake(uri, pa.table(columns))
    return uri


def _run(spark: SparkSession, planted: Planted, prefix: str, **settings: Any) -> tuple[MonitorSummary, dict[str, Any]]:
    """One monitor run; the ``:table`` rows of the whole population by model id."""
    cfg = MonitorSettings(
        granularities=["1 hour"],
        columns=["num_0", "prediction"],
        positive_label="1",
        evidently=False,
        output_prefix=prefix,
        **settings,
    )
    tables = MonitorTables.beside(planted.inference, cfg)
    summary = run_monitor(spark, cfg, tables)
    rows = DeltaTable(tables.profile).to_pandas()
    whole = rows[(rows.column_name == ":table") & rows.slice_key.isna()]
    return summary, {r["model_id"]: r for r in whole.to_dict("records")}


def _by_request(planted: Planted) -> dict[str, list[Any]]:
    f = planted.frame
    return {
        "request_id": [f"req-{j}" for j in f["request"]] + ["req-nobody"],
        "record_index": [*f["record"].tolist(), 0],
        "label": [*f["label"].tolist(), 1],
    }


def test_an_alias_move_inside_a_window_gives_each_version_its_own_quality(
    spark: SparkSession, planted: Planted
) -> None:
    labels = _labels(planted, "labels_request", _by_request(planted))
    old_summary, mixed = _run(
        spark, planted, "compat", label_col="label", labels_table=labels, model_id_col="served_entity"
    )
    assert set(mixed) == {"champion"}
    assert mixed["champion"]["accuracy"] == pytest.approx(0.5)  # what the mix reports: neither version's figure

    summary, rows = _run(spark, planted, "compat", label_col="label", labels_table=labels)  # same tables
    records = 2 * MOVED_AT
    assert {m: (r["count"], r["labeled_count"]) for m, r in rows.items() if m != "champion"} == {
        "champion@1": (records, records),
        "champion@2": (2 * REQUESTS - records, 2 * REQUESTS - records),
    }
    v1, v2 = rows["champion@1"], rows["champion@2"]
    assert (v1["accuracy"], v1["precision"], v1["recall"], v1["f1"]) == (1.0, 1.0, 1.0, 1.0)
    assert (v2["accuracy"], v2["precision"], v2["recall"], v2["f1"]) == (0.0, 0.0, 0.0, 0.0)
    # the older run's rows (keyed by the entity alone) are left as they were, beside the new keys
    assert rows["champion"]["accuracy"] == pytest.approx(0.5)
    assert summary.windows_processed == 2
    assert (summary.labels_matched, summary.labels_unmatched) == (2 * REQUESTS, 1)
    assert (old_summary.labels_matched, old_summary.labels_unmatched) == (2 * REQUESTS, 1)
    again, _ = _run(spark, planted, "compat", label_col="label", labels_table=labels)
    assert again.windows_processed == 0


def test_a_baseline_of_the_entity_is_the_baseline_of_each_of_its_versions(
    spark: SparkSession, planted: Planted
) -> None:
    """The baseline holds the entity's rows of both versions: each version is compared with all of them."""
    cfg = MonitorSettings(
        granularities=["1 hour"],
        columns=["num_0"],
        evidently=False,
        output_prefix="baseline",
        baseline_table=planted.inference,
    )
    tables = MonitorTables.beside(planted.inference, cfg)
    run_monitor(spark, cfg, tables)
    drift = DeltaTable(tables.drift).to_pandas()
    base = drift[(drift.drift_type == "baseline") & drift.slice_key.isna() & (drift.column_name == "num_0")]
    records = 2 * MOVED_AT
    assert sorted(zip(base.model_id, base["count"], base.reference_count, strict=True)) == [
        ("champion@1", records, 2 * REQUESTS),
        ("champion@2", 2 * REQUESTS - records, 2 * REQUESTS),
    ]


def _quality(rows: dict[str, Any]) -> dict[str, tuple[Any, ...]]:
    return {m: tuple(r[q] for q in QUALITY) for m, r in rows.items()}


def test_labels_by_client_request_id_give_the_request_id_figures(spark: SparkSession, planted: Planted) -> None:
    f = planted.frame
    by_request = _labels(planted, "labels_by_request", _by_request(planted))
    by_client = _labels(
        planted,
        "labels_by_client",
        {
            "client_request_id": [f"client-{j}" for j in f["request"]] + ["client-nobody"],
            "record_index": [*f["record"].tolist(), 0],
            "label": [*f["label"].tolist(), 1],
        },
    )
    _, expected = _run(spark, planted, "by_request", label_col="label", labels_table=by_request)
    summary, rows = _run(
        spark, planted, "by_client", label_col="label", labels_table=by_client, labels_join="client_request_id"
    )
    assert _quality(rows) == _quality(expected)
    assert set(rows) == {"champion@1", "champion@2"}
    assert (summary.labels_matched, summary.labels_unmatched) == (2 * REQUESTS, 1)


def test_a_client_label_without_record_index_labels_every_record_of_its_request(
    spark: SparkSession, planted: Planted
) -> None:
    labelled = 10  # the first ten requests, by version 1; record 0 is right, record 1 gets its label
    labels = _labels(
        planted,
        "labels_per_request",
        {
            "client_request_id": [f"client-{j}" for j in range(labelled)] + ["client-nobody"],
            "label": [int(planted.frame["label"][2 * j]) for j in range(labelled)] + [0],
        },
    )
    summary, rows = _run(
        spark, planted, "per_request", label_col="label", labels_table=labels, labels_join="client_request_id"
    )
    assert rows["champion@1"]["labeled_count"] == 2 * labelled
    assert rows["champion@2"]["labeled_count"] == 0
    f = planted.frame
    same = sum(int(f["label"][2 * j] == f["label"][2 * j + 1]) for j in range(labelled))
    assert rows["champion@1"]["accuracy"] == pytest.approx((labelled + same) / (2 * labelled))
    assert (summary.labels_matched, summary.labels_unmatched) == (labelled, 1)


def test_labels_by_entity_key_and_time_give_the_request_id_figures(spark: SparkSession, planted: Planted) -> None:
    """Each label is stamped between its record's request and the next request, so the latest
    record of its customer at or before it is its own; three more find none."""
    f = planted.frame
    halfway = [t + STEP / 2 for t in f["ts"]]
    unmatched = [
        (int(f["customer"][-1]), START + timedelta(hours=3)),  # 2 h after the customer's last record
        (10_000, START + timedelta(minutes=10)),  # a customer never scored
        (0, START - timedelta(minutes=1)),  # before any record of the customer
    ]
    labels = _labels(
        planted,
        "labels_by_key",
        {
            "customer_id": [*f["customer"].tolist(), *(c for c, _ in unmatched)],
            "event_time": pa.array([*halfway, *(t for _, t in unmatched)], pa.timestamp("us", tz="UTC")),
            "label": [*f["label"].tolist(), 1, 1, 1],
        },
    )
    by_request = _labels(planted, "labels_for_key", _by_request(planted))
    _, expected = _run(spark, planted, "for_key", label_col="label", labels_table=by_request)
    summary, rows = _run(
        spark,
        planted,
        "by_key",
        label_col="label",
        labels_table=labels,
        labels_join="key_as_of",
        labels_key_cols=["customer_id"],
        labels_timestamp_col="event_time",
        labels_tolerance_s=3600,
    )
    assert _quality(rows) == _quality(expected)
    assert (summary.labels_matched, summary.labels_unmatched) == (2 * REQUESTS, 3)


def test_the_as_of_join_refuses_a_record_older_than_the_tolerance(spark: SparkSession, planted: Planted) -> None:
    f = planted.frame  # the last four records (their customers are not scored again), labelled 10 minutes on
    late = [t + timedelta(minutes=10) for t in f["ts"][-4:]]
    labels = _labels(
        planted,
        "labels_late",
        {
            "customer_id": f["customer"][-4:].tolist(),
            "event_time": pa.array(late, pa.timestamp("us", tz="UTC")),
            "label": f["label"][-4:].tolist(),
        },
    )
    common = {
        "label_col": "label",
        "labels_table": labels,
        "labels_join": "key_as_of",
        "labels_key_cols": ["customer_id"],
        "labels_timestamp_col": "event_time",
    }
    tight, rows = _run(spark, planted, "late_tight", labels_tolerance_s=300, **common)
    assert (tight.labels_matched, tight.labels_unmatched) == (0, 4)
    assert rows["champion@2"]["labeled_count"] == 0
    loose, rows = _run(spark, planted, "late_loose", labels_tolerance_s=900, **common)
    assert (loose.labels_matched, loose.labels_unmatched) == (4, 0)
    assert rows["champion@2"]["labeled_count"] == 4
    assert rows["champion@2"]["accuracy"] == 0.0


def test_a_labels_table_without_the_join_columns_is_refused_by_name(spark: SparkSession, planted: Planted) -> None:
    labels = _labels(planted, "labels_no_key", {"request_id": ["req-0"], "label": [1]})
    with pytest.raises(ConfigError, match=r"monitor\.labels_key_cols: \['customer_id'\] not in the labels table"):
        _run(
            spark,
            planted,
            "no_key",
            label_col="label",
            labels_table=labels,
            labels_join="key_as_of",
            labels_key_cols=["customer_id"],
        )
    with pytest.raises(ConfigError, match=r"monitor\.labels_join: \['client_request_id'\] not in the labels"):
        _run(spark, planted, "no_key", label_col="label", labels_table=labels, labels_join="client_request_id")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"labels_join": "client_request_id"}, "labels_join 'client_request_id' joins labels_table's label_col"),
        ({"labels_join": "key_as_of", "label_col": "y", "labels_table": "t"}, "labels_key_cols: labels_join"),
        ({"label_col": "y", "labels_table": "t", "labels_key_cols": ["k"]}, "labels_key_cols is for labels_join"),
        ({"label_col": "y", "labels_table": "t", "labels_tolerance_s": 60}, "labels_tolerance_s is for"),
        (
            {"labels_join": "key_as_of", "label_col": "y", "labels_table": "t", "labels_key_cols": ["k", "k"]},
            "named twice",
        ),
        (
            {"labels_join": "key_as_of", "label_col": "y", "labels_table": "t", "labels_key_cols": ["timestamp"]},
            "is the label or its time",
        ),
        ({"labels_join": "by_magic", "label_col": "y", "labels_table": "t"}, "labels_join"),
    ],
)
def test_ambiguous_label_settings_are_refused(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        MonitorSettings(**settings)


def test_label_settings_survive_a_dump_and_reload() -> None:
    cfg = MonitorSettings(label_col="y", labels_table="t", labels_join="client_request_id")
    assert MonitorSettings.model_validate(cfg.model_dump()) == cfg
    as_of = MonitorSettings(label_col="y", labels_table="t", labels_join="key_as_of", labels_key_cols=["k"])
    assert MonitorSettings.model_validate(as_of.model_dump()) == as_of
