"""Per-request overhead of the scoring core and of the inference-row conversion, on fakes.

    .venv/bin/python -m benchmarks.core_overhead [--requests 250] [--repeat 20]

Scores micro-batches of ``--requests`` one-record ``dataframe_records`` requests (the stream's
typical shape) with :class:`~lakeserve.scoring.testing.FakeServedModel` and
:class:`~lakeserve.features.lookup.InMemoryFeatureLookup`, so no Kafka, Feast, MLflow or Delta
time is counted: what remains is parsing, routing, assembly, conformance and answering. Then
turns those results into inference-table rows (``to_arrow``). Prints the best of ``--repeat``
runs as microseconds per request.
"""

from __future__ import annotations

import sys
from pathlib import Path

if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)  # benchmarks/http.py would shadow the standard library's http

import argparse
import json
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import pandas as pd
import pyarrow as pa

from lakeserve.features.lookup import FeatureTable, InMemoryFeatureLookup
from lakeserve.monitoring.inference_rows import to_arrow
from lakeserve.monitoring.table_schema import inference_schema
from lakeserve.scoring.core import ScoringCore
from lakeserve.scoring.records import Origin, RequestResult, ScoringRequest
from lakeserve.scoring.settings import EndpointSettings, Route, ServedEntity, TrafficConfig
from lakeserve.scoring.testing import FakeServedModel

CUSTOMERS = 100
INPUTS = pa.schema(
    [
        pa.field("customer_id", pa.int64(), nullable=False),
        pa.field("amount", pa.float64(), nullable=False),
        pa.field("hour", pa.int64(), nullable=False),
        pa.field("channel", pa.string()),
        pa.field("avg_amount", pa.float64(), nullable=False),
        pa.field("txn_count", pa.int64(), nullable=False),
    ]
)


def build_core() -> ScoringCore:
    """One served entity reading one feature service, as the demo endpoint serves."""
    model = FakeServedModel(
        name="champion",
        fn=lambda f: f["amount"] / f["avg_amount"],
        input_schema=INPUTS,
        output_schema=pa.schema([pa.field("prediction", pa.float64())]),
        feature_service="fs",
        entity_keys=["customer_id"],
    )
    endpoint = EndpointSettings(
        served_entities=[ServedEntity(name="champion", entity_name="m", entity_version="1")],
        traffic_config=TrafficConfig(routes=[Route(served_model_name="champion", traffic_percentage=100)]),
    )
    return ScoringCore(endpoint, {"champion": model}, feature_store())


def feature_store() -> InMemoryFeatureLookup:
    frame = pd.DataFrame(
        {
            "customer_id": range(CUSTOMERS),
            "avg_amount": [10.0 + i for i in range(CUSTOMERS)],
            "txn_count": [i % 7 for i in range(CUSTOMERS)],
        }
    )
    return InMemoryFeatureLookup({"fs": FeatureTable(["customer_id"], frame)})


def requests(count: int) -> list[ScoringRequest]:
    now = datetime.now(UTC)
    return [
        ScoringRequest(
            request_id=f"r{i}",
            body=json.dumps({"dataframe_records": [record(i)]}).encode(),
            received_at=now,
            origin=Origin("kafka", "requests", 0, i),
        )
        for i in range(count)
    ]


def record(i: int) -> dict[str, object]:
    """Request-time fields only; the features come from the store."""
    return {"customer_id": i % CUSTOMERS, "amount": 5.0 + i, "hour": i % 24, "channel": "web"}


def best_us(step: Callable[[], object], repeat: int, count: int) -> float:
    """The fastest of ``repeat`` runs of ``step``, in microseconds per request."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return min(times) / count * 1e6


def rows(results: Sequence[RequestResult], schema: pa.Schema) -> pa.Table:
    return to_arrow(results, schema, "bench", 1.0, 1 << 20)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=250)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args(argv)
    core, batch = build_core(), requests(args.requests)
    results = core.score(batch)
    if not all(r.ok for r in results):
        raise SystemExit(f"benchmark requests failed: {next(r for r in results if not r.ok).response_body!r}")
    schema = inference_schema({f.name: f.type for f in INPUTS}, {"prediction": pa.float64()})
    score_us = best_us(lambda: core.score(batch), args.repeat, args.requests)
    arrow_us = best_us(lambda: rows(results, schema), args.repeat, args.requests)
    print(f"ScoringCore.score: {score_us:8.1f} µs/request ({args.requests} one-record requests per batch)")
    print(f"to_arrow:          {arrow_us:8.1f} µs/request")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
