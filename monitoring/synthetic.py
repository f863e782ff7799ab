"""Synthetic inference tables with the real schema, for tests, the benchmark and the notebooks.

Rows spread evenly over ``windows`` windows of ``window`` length; numeric inputs are standard
normal (``n_items`` is a Poisson count, with ties), categorical inputs uniform over four
values. Drift is planted on purpose: from window ``drift_from`` on, each column in
``drift_columns`` is shifted by ``drift_shift`` standard deviations (numeric) or skewed to
55 % on its first category (categorical). Served entities differ by error rate, latency and
how well the score separates the labels, so A/B effects can be planted too. With ``keys``, a
``customer_id`` input holds one of that many keys per record, the served entity is drawn per
key (sticky routing, as ``scoring/routing.py`` does) and each key's latency carries its own
lognormal factor (sigma ``key_latency_sd``), so records of one key are correlated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa

from lakeserve.monitoring.table_schema import inference_schema

CATEGORIES = ["a", "b", "c", "d"]
SKEWED = [0.55, 0.15, 0.15, 0.15]


@dataclass(frozen=True, slots=True)
class EntitySpec:
    """One served entity: its traffic share and behaviour."""

    name: str
    traffic: float = 0.5
    error_rate: float = 0.01
    latency_ms: float = 20.0  # mean of a lognormal with sigma 0.3
    signal: float = 1.5  # weight of num_0 in the true log-odds the score sees


@dataclass(frozen=True, slots=True)
class SyntheticSpec:
    rows: int = 10_000
    start: datetime = datetime(2025, 1, 1, tzinfo=UTC)
    window: timedelta = timedelta(hours=1)
    windows: int = 6
    numeric: int = 3  # num_0 .. num_{k-1}, plus n_items
    categorical: int = 2  # cat_0 .. cat_{k-1}
    entities: Sequence[EntitySpec] = field(
        default_factory=lambda: [EntitySpec("champion", 0.8), EntitySpec("challenger", 0.2)]
    )
    drift_columns: Sequence[str] = ()
    drift_from: int | None = None
    drift_shift: float = 1.0
    seed: int = 0
    keys: int | None = None  # a customer_id column and sticky routing over this many keys
    key_latency_sd: float = 0.3


def input_types(spec: SyntheticSpec) -> dict[str, pa.DataType]:
    cols: dict[str, pa.DataType] = {"customer_id": pa.int64()} if spec.keys is not None else {}
    cols.update({f"num_{i}": pa.float64() for i in range(spec.numeric)})
    cols["n_items"] = pa.int64()
    cols.update({f"cat_{i}": pa.string() for i in range(spec.categorical)})
    return cols


PREDICTION_TYPES: dict[str, pa.DataType] = {"prediction": pa.int64(), "probability": pa.float64()}


def synthetic_inference(spec: SyntheticSpec) -> tuple[pa.Table, pa.Table]:
    """The inference rows and their labels (request_id, record_index, label)."""
    rng = np.random.default_rng(spec.seed)
    n = spec.rows
    window_idx = np.arange(n) * spec.windows // n
    offsets = (window_idx + rng.random(n)) * spec.window.total_seconds()
    ts_us = (spec.start.timestamp() + offsets) * 1e6
    drifted = np.zeros(n, dtype=bool) if spec.drift_from is None else window_idx >= spec.drift_from
    inputs = _inputs(spec, rng, drifted)
    ent = _entities(spec, rng, n)
    factor = np.ones(n)
    if spec.keys is not None:  # from a stream of its own: the other columns stay as without keys
        keyed = np.random.default_rng([spec.seed, 1])
        key = keyed.integers(0, spec.keys, n)
        ent = _entities(spec, keyed, spec.keys)[key]
        sd = spec.key_latency_sd
        factor = keyed.lognormal(-sd * sd / 2, sd, spec.keys)[key]
        inputs["customer_id"] = key.astype(np.int64)
    proba, label = _scores(spec, rng, inputs["num_0"], ent)
    ok = rng.random(n) >= np.array([e.error_rate for e in spec.entities])[ent]
    columns = _base_columns(spec, rng, ts_us.astype(np.int64), ent, ok, factor)
    columns.update({k: pa.array(v) for k, v in inputs.items()})
    columns["prediction"] = pa.array(np.where(ok, (proba >= 0.5).astype(np.int64), 0), mask=~ok)
    columns["probability"] = pa.array(proba, mask=~ok)
    schema = inference_schema(input_types(spec), PREDICTION_TYPES)
    table = pa.Table.from_pydict({f.name: columns[f.name] for f in schema}, schema=schema)
    labels = pa.table(
        {
            "request_id": columns["request_id"],
            "record_index": columns["record_index"],
            "label": pa.array(label.astype(np.int64)),
        }
    )
    return table, labels


def _inputs(spec: SyntheticSpec, rng: np.random.Generator, drifted: np.ndarray) -> dict[str, np.ndarray]:
    n = len(drifted)
    out: dict[str, np.ndarray] = {}
    for i in range(spec.numeric):
        name = f"num_{i}"
        shift = spec.drift_shift if name in spec.drift_columns else 0.0
        out[name] = rng.normal(size=n) + shift * drifted
    items_shift = spec.drift_shift if "n_items" in spec.drift_columns else 0.0
    out["n_items"] = rng.poisson(3.0 + 3.0 * items_shift * drifted).astype(np.int64)
    for i in range(spec.categorical):
        name = f"cat_{i}"
        plain = rng.choice(CATEGORIES, size=n)
        skew = rng.choice(CATEGORIES, size=n, p=SKEWED)
        out[name] = np.where(drifted & (name in spec.drift_columns), skew, plain).astype(object)
    return out


def _entities(spec: SyntheticSpec, rng: np.random.Generator, n: int) -> np.ndarray:
    shares = np.array([e.traffic for e in spec.entities], dtype=float)
    return rng.choice(len(spec.entities), size=n, p=shares / shares.sum())


def _scores(
    spec: SyntheticSpec, rng: np.random.Generator, x: np.ndarray, ent: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    truth = 1.5 * x + rng.normal(scale=0.5, size=len(x))
    label = rng.random(len(x)) < 1 / (1 + np.exp(-truth))
    signal = np.array([e.signal for e in spec.entities])[ent]
    seen = signal * x + rng.normal(scale=1.0, size=len(x))
    return 1 / (1 + np.exp(-seen)), label


def _base_columns(
    spec: SyntheticSpec,
    rng: np.random.Generator,
    ts_us: np.ndarray,
    ent: np.ndarray,
    ok: np.ndarray,
    latency_factor: np.ndarray,
) -> dict[str, pa.Array]:
    n = len(ts_us)
    names = np.array([e.name for e in spec.entities], dtype=object)[ent]
    lat_mean = np.array([e.latency_ms for e in spec.entities])[ent]
    latency = lat_mean * latency_factor * rng.lognormal(mean=-0.045, sigma=0.3, size=n)
    ts = pa.array(ts_us, type=pa.timestamp("us", tz="UTC"))
    return {
        "request_id": pa.array([f"req-{spec.seed}-{i:09d}" for i in range(n)]),
        "client_request_id": pa.nulls(n, pa.string()),
        "record_index": pa.array(np.zeros(n, dtype=np.int32)),
        "date": ts.cast(pa.date32()),
        "timestamp_ms": pa.array(ts_us // 1000),
        "timestamp": ts,
        "status_code": pa.array(np.where(ok, 200, 500).astype(np.int32)),
        "error_code": pa.array(np.full(n, "MODEL_ERROR", dtype=object), type=pa.string(), mask=ok),
        "error_message": pa.array(np.full(n, "model raised", dtype=object), type=pa.string(), mask=ok),
        "sampling_fraction": pa.array(np.ones(n)),
        "execution_time_ms": pa.array((latency * 0.6).astype(np.int64)),
        "latency_ms": pa.array(latency),
        "request": pa.nulls(n, pa.string()),
        "response": pa.nulls(n, pa.string()),
        "request_metadata": pa.nulls(n, pa.map_(pa.string(), pa.string())),
        "served_entity": pa.array(names, type=pa.string()),
        "model_name": pa.array(np.full(n, "card_fraud", dtype=object), type=pa.string()),
        "model_version": pa.array(
            np.array([str(i + 1) for i in range(len(spec.entities))], dtype=object)[ent]
        ),
        "is_shadow": pa.array(np.zeros(n, dtype=bool)),
        "transport": pa.array(np.full(n, "batch", dtype=object), type=pa.string()),
        "kafka_topic": pa.nulls(n, pa.string()),
        "kafka_partition": pa.nulls(n, pa.int32()),
        "kafka_offset": pa.nulls(n, pa.int64()),
        "logging_error_codes": pa.nulls(n, pa.list_(pa.string())),
    }


def write_synthetic(uri: str, spec: SyntheticSpec, labels_uri: str | None = None) -> pa.Table:
    """Write the inference table (partitioned by date) and, if asked, its labels table."""
    from deltalake import write_deltalake

    table, labels = synthetic_inference(spec)
    write_deltalake(uri, table, mode="append", partition_by=["date"])
    if labels_uri is not None:
        write_deltalake(labels_uri, labels, mode="append")
    return table
