"""The notebooks run top to bottom, in a real kernel, against an inference table written by the
real streaming pipeline (Kafka, Feast, MLflow, Delta) after the monitor and A/B jobs ran on it;
a failing cell fails the test. Each notebook finds its tables through ``$LAKESERVE_CONFIG``."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nbformat
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import yaml
from deltalake import DeltaTable, write_deltalake
from nbclient import NotebookClient

from lakeserve.features import demo_repo
from lakeserve.jobs import ab_analysis, monitor
from lakeserve.jobs.demo_data import REQUEST_FIELDS, fraud_probability, request_bodies
from lakeserve.settings import Settings, load_settings

# The streaming helpers live beside the pipeline tests, which put their folder on sys.path
# through their conftest; this module runs without it.
sys.path.insert(0, str(Path(__file__).parents[1] / "pipelines"))
from conftest_helpers import produce, read_topic, running, settings_for

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from lakeserve.jobs.demo import DemoReport

NOTEBOOKS = Path(__file__).parents[2] / "notebooks"
MONITORED = [*REQUEST_FIELDS[1:], *demo_repo.V2_FEATURES]  # what the models saw, ids aside
UNKNOWN_CUSTOMER = {"customer_id": 987654, "amount": 3.5, "merchant_category": "fuel", "hour_of_day": 1, "is_online": 0}
BAD = [  # answered with an error, and logged
    b'{"dataframe_records": [{"customer_id": 1,',
    b'{"rows": []}',
    json.dumps({"dataframe_records": [UNKNOWN_CUSTOMER]}).encode(),
]
REQUESTS, RECORDS = 270 + 30, 270 + 30 * 3  # the good ones
NO_SUCH_CLIENT = "no-such-client"  # one label that matches no record


@dataclass
class Served:
    config: Path
    settings: Settings
    rows: pd.DataFrame
    ab_markdown: str
    monitor_summary: str = ""


@pytest.fixture(scope="module")
def served(
    stack: Settings, demo_assets: DemoReport, spark: SparkSession, tmp_path_factory: pytest.TempPathFactory
) -> Served:
    """About 300 demo requests (three bad ones) through the worker, then one monitor run (labels
    joined by client_request_id) and one A/B run."""
    assert demo_assets.data_dir is not None
    base = settings_for(stack, "notebooks")
    customers = pd.read_parquet(demo_assets.data_dir / "customers.parquet")
    bodies = request_bodies(customers, 270, seed=5) + BAD
    bodies += request_bodies(customers, 30, seed=6, records_per_request=3, prefix="multi")
    assert len(bodies) == len(BAD) + REQUESTS
    with running(base):
        produce(base, bodies)  # keyed by position; an answer carries its request's key
        read_topic(base, base.kafka.responses_topic, lambda seen: len({a.key for a in seen}) >= len(bodies))
    # the worker flushed its rows on the way out
    labels = _outcomes(base, bodies, customers)
    config = _config(base, _training_baseline(base, demo_assets.data_dir), labels, tmp_path_factory.mktemp("nb"))
    settings = load_settings(config)
    assert settings.inference_table_uri == base.inference_table_uri
    summary = monitor.run_from_settings(settings).summary
    markdown = ab_analysis.run_from_settings(settings).summary
    return Served(config, settings, DeltaTable(settings.inference_table_uri).to_pandas(), markdown, summary)


def _outcomes(settings: Settings, bodies: list[bytes], customers: pd.DataFrame) -> str:
    """Fraud outcomes of the good requests' records, keyed by (client_request_id, record_index) as
    a labelling system knows them, drawn from the demo's planted rule; plus one for no request."""
    rows = []
    for body in bodies:
        try:
            doc = json.loads(body)
        except ValueError:
            continue  # the truncated one
        if "client_request_id" not in doc:
            continue
        rows += [{"client_request_id": doc["client_request_id"], "record_index": i, **r}
                 for i, r in enumerate(doc["dataframe_records"])]
    tx = pd.DataFrame(rows)
    who = customers.set_index("customer_id").loc[tx["customer_id"]].reset_index()
    fraud = np.random.default_rng(7).uniform(0, 1, len(tx)) < fraud_probability(tx, who)
    labels = tx[["client_request_id", "record_index"]].assign(is_fraud=fraud.astype("int64"))
    labels.loc[len(labels)] = [NO_SUCH_CLIENT, 0, 1]
    uri = settings.table_uri(f"{settings.endpoint.auto_capture_config.table_name}_outcomes")
    write_deltalake(uri, labels.astype({"record_index": "int32"}), mode="overwrite")
    return uri


def _training_baseline(settings: Settings, data_dir: Path) -> str:
    """The training transactions with their customers' features: the monitor's baseline."""
    training = pd.read_parquet(data_dir / "transactions.parquet")
    customers = pd.read_parquet(data_dir / "customers.parquet")
    uri = settings.table_uri(f"{settings.endpoint.auto_capture_config.table_name}_baseline")
    write_deltalake(uri, training.merge(customers, on="customer_id")[MONITORED], mode="overwrite")
    return uri


def _config(settings: Settings, baseline: str, labels: str, folder: Path) -> Path:
    """The settings file the jobs and the notebooks load: the test's tables, monitor and ab sections."""
    data = settings.model_dump(mode="json", include={"stack", "spark", "tables", "endpoint"})
    data["endpoint"] = {"auto_capture_config": data["endpoint"]["auto_capture_config"]}
    data["monitor"] = {
        "granularities": ["1 minute"],
        "columns": MONITORED,
        "baseline_table": baseline,
        "prediction_proba_col": "probability",
        "positive_label": "1",
        "min_rows": 50,
        "label_col": "is_fraud",
        "labels_table": labels,
        "labels_join": "client_request_id",
    }
    # no cluster key: the job takes the key the demo models route by (their entity key, customer_id)
    data["ab"] = {"prediction_proba_col": "probability", "bootstrap_resamples": 200}
    path = folder / "lakeserve.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _run(name: str, served: Served, tmp_path: Path) -> tuple[str, int]:
    """Execute the notebook in a ``python3`` kernel of this interpreter; its text output and figure count."""
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert "parameters" in first.metadata.get("tags", []), "the first code cell holds the parameters"
    client = NotebookClient(nb, kernel_name="python3", timeout=180, resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute(env={**os.environ, "LAKESERVE_CONFIG": str(served.config)})
    finally:
        nbformat.write(nb, tmp_path / f"{name}.ipynb")  # with its outputs, for a look after a failure
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    text = "".join(_text(o) for o in outputs)
    figures = sum("image/png" in o.get("data", {}) for o in outputs)
    return text, figures


def _text(output: Any) -> str:
    if output.output_type == "stream":
        return str(output.text)
    return str(output.get("data", {}).get("text/plain", "")) + "\n"


def test_inference_table_exploration(served: Served, tmp_path: Path) -> None:
    text, figures = _run("inference_table_exploration", served, tmp_path)
    rows = served.rows
    assert len(rows) == RECORDS + len(BAD)  # every record of every request, once
    assert f"inference table: {served.settings.inference_table_uri}" in text
    assert f"{len(rows):,} rows, {rows.request_id.nunique():,} requests" in text
    errors = rows[rows.status_code != 200]
    assert len(errors) == len(BAD)
    assert f"{len(errors):,} error rows of {len(rows):,}" in text
    assert {"BAD_REQUEST", "RESOURCE_DOES_NOT_EXIST"} <= set(errors.error_code)
    assert figures == 4  # volume, latency, error codes, inputs


@pytest.mark.parametrize("spread", [pd.Timedelta(0), pd.Timedelta(days=3)], ids=["one-instant", "three-days"])
def test_inference_table_exploration_at_any_time_span(served: Served, spread: pd.Timedelta, tmp_path: Path) -> None:
    """The same rows, arrived all at once (a burst read by a worker that started late: the
    volume plot once hung its kernel there) or over three days; every cell runs and plots."""
    source = DeltaTable(served.settings.inference_table_uri).to_pyarrow_table()
    start = pd.Timestamp(pc.min(source["timestamp"]).as_py())
    arrived = [start + spread * (i / max(source.num_rows - 1, 1)) for i in range(source.num_rows)]
    stamps = pa.array(arrived, source.schema.field("timestamp").type)
    rows = source.set_column(source.schema.get_field_index("timestamp"), "timestamp", stamps)
    days = pa.array([t.date() for t in arrived], pa.date32())
    rows = rows.set_column(rows.schema.get_field_index("date"), "date", days)
    prefix = f"nb_span_{int(spread.total_seconds())}"
    data = yaml.safe_load(served.config.read_text())
    data["endpoint"]["auto_capture_config"]["table_name_prefix"] = prefix
    config = tmp_path / "lakeserve.yaml"
    config.write_text(yaml.safe_dump(data))
    settings = load_settings(config)
    write_deltalake(settings.inference_table_uri, rows, partition_by=["date"], mode="overwrite")
    frame = rows.to_pandas()
    text, figures = _run("inference_table_exploration", Served(config, settings, frame, ""), tmp_path)
    assert f"{len(frame):,} rows, {frame.request_id.nunique():,} requests" in text
    assert figures == 4


def test_drift_over_time(served: Served, tmp_path: Path) -> None:
    text, figures = _run("drift_over_time", served, tmp_path)
    tables = monitor.MonitorTables.beside(served.settings.inference_table_uri, served.settings.monitor)
    drift = DeltaTable(tables.drift).to_pandas()
    plotted = drift[(drift.granularity == "1 minute") & drift.slice_key.isna()]
    assert "baseline" in set(plotted.drift_type)
    flagged = sorted(drift.loc[drift.drift_detected, "column_name"].unique())
    assert flagged, "the demo requests draw merchants uniformly, unlike the training data"
    assert f"flagged columns: {', '.join(flagged)}\n" in text
    assert figures == 1 + plotted.drift_type.nunique()  # rows per window, one drift figure per drift type


def test_ab_readout(served: Served, tmp_path: Path) -> None:
    text, figures = _run("ab_readout", served, tmp_path)
    assert "Unit of analysis: the routing key `customer_id`" in served.ab_markdown  # the models' entity key
    verdicts = [line.removeprefix("**Verdict:** ") for line in served.ab_markdown.splitlines() if "Verdict" in line]
    assert verdicts
    for verdict in verdicts:
        assert f"VERDICT {verdict}\n" in text
    assert "challenger" in text
    assert "champion" in text
    assert figures == 2


def test_model_quality(served: Served, tmp_path: Path) -> None:
    """Quality per model version from the profile table, and the client_request_id join checked in
    pandas: both agree with the monitor's figures, computed here from the raw rows."""
    text, figures = _run("model_quality", served, tmp_path)
    rows = served.rows[served.rows.status_code == 200]
    assert served.settings.monitor.labels_table is not None
    labels = DeltaTable(served.settings.monitor.labels_table).to_pandas()
    joined = rows.merge(labels, on=["client_request_id", "record_index"])
    assert len(joined) == RECORDS
    assert len(labels) == RECORDS + 1
    assert f"labels: {RECORDS} matched a record, 1 matched none" in served.monitor_summary
    assert f"labels: {RECORDS} of {RECORDS + 1} matched a record by client_request_id + record_index" in text
    model_ids = rows.served_entity + "@" + rows.model_version
    assert model_ids.nunique() == 2  # champion and challenger, one version each
    joined["model_id"] = joined.served_entity + "@" + joined.model_version
    for model, part in joined.groupby("model_id"):
        accuracy = (part.prediction.astype(int) == part.is_fraud).mean()
        count = int((model_ids == model).sum())
        head = f"QUALITY {model}: {count} rows, {len(part)} labelled, accuracy "
        (line,) = [line for line in text.splitlines() if line.startswith(head)]
        assert float(line.removeprefix(head)) == pytest.approx(accuracy, abs=0.51e-4)  # printed to 4 places
    assert figures == 1  # accuracy per model version over the windows
