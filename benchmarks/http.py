"""REST throughput and latency of lakeserve beside ``mlflow models serve``, same model, same run.

    .venv/bin/python -m benchmarks.http [--requests 400] [--concurrency 1 8 32]

Brings up the embedded stack and the demo assets in a state folder of its own (ports 29092/3),
serves the champion model both ways on loopback — ``lakeserve serve --http --workers 0`` (with
Feast lookup, micro-batching and inference-table logging on) and ``mlflow models serve
--env-manager local`` — and sends the same one-record ``dataframe_records`` body (every model
input, so MLflow needs no lookup) from N client threads with keep-alive connections. Prints a
side-by-side table of throughput and p50/p99 latency per concurrency, and the aims (p50 alone
no worse than MLflow's, 3x its throughput at 32 clients) met or not.
"""

from __future__ import annotations

import sys
from pathlib import Path

if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)  # this file is named http.py: keep it from shadowing the standard library's http

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pandas as pd
import yaml

from lakeserve.features import demo_repo
from lakeserve.jobs.demo import prepare_assets
from lakeserve.pipelines.embedded.stack import Stack
from lakeserve.scoring.settings import Limits
from lakeserve.settings import Settings, load_settings

STATE = Path(tempfile.gettempdir()) / "lakeserve-bench-http"
OURS_PORT, MLFLOW_PORT = 28080, 28081
DEFAULT_WAIT_MS = Limits().max_batch_wait_ms


def bench_settings(max_batch_wait_ms: int) -> Path:
    """A config serving only the champion, on its own Kafka ports and state folder."""
    data = {
        "stack": {"state_dir": str(STATE), "kafka_port": 29092, "kafka_controller_port": 29093},
        "kafka": {"bootstrap_servers": ["127.0.0.1:29092"]},
        "mlflow": {"ui_port": None},
        "endpoint": {
            "served_entities": [{"name": "champion", "entity_name": "card_fraud", "alias": "champion"}],
            "traffic_config": {"routes": [{"served_model_name": "champion", "traffic_percentage": 100}]},
            "limits": {"max_batch_wait_ms": max_batch_wait_ms},
        },
    }
    path = STATE / f"bench-{max_batch_wait_ms}.yaml"
    STATE.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def payload(settings: Settings, data_dir: Path) -> bytes:
    customers = pd.read_parquet(data_dir / "customers.parquet")
    c = customers.iloc[7]
    record = {"customer_id": int(c.customer_id), "amount": 42.5, "merchant_category": "grocery",
              "hour_of_day": 14, "is_online": 1}  # fmt: skip
    record.update({f: (c[f].item() if hasattr(c[f], "item") else c[f]) for f in demo_repo.V1_FEATURES})
    return json.dumps({"dataframe_records": [record]}).encode()


@contextmanager
def process(cmd: list[str], ready_url: str, env: dict[str, str] | None = None) -> Iterator[None]:
    """A server process, yielded once ``ready_url`` answers 200 (polled, 180 s deadline)."""
    log = open(STATE / f"{Path(cmd[2] if len(cmd) > 2 else cmd[0]).name}.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    try:
        deadline = time.monotonic() + 180
        while not _ok(ready_url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{cmd[:4]} did not become ready; see {log.name}")
            threading.Event().wait(0.2)
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def load(url: str, body: bytes, concurrency: int, total: int) -> dict[str, float]:
    """``total`` requests from ``concurrency`` threads; throughput and latency percentiles."""
    latencies: list[float] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        mine = []
        with httpx.Client(timeout=60, headers={"content-type": "application/json"}) as http:
            for _ in range(n):
                start = time.perf_counter()
                answer = http.post(url, content=body)
                mine.append(time.perf_counter() - start)
                if answer.status_code != 200:
                    raise RuntimeError(f"{url}: {answer.status_code} {answer.text[:200]}")
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(total // concurrency,)) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    q = statistics.quantiles(latencies, n=100)
    return {"rps": len(latencies) / elapsed, "p50_ms": q[49] * 1000, "p99_ms": q[98] * 1000}


def run(levels: list[int], total: int, waits: list[int]) -> list[dict[str, Any]]:
    base = load_settings(bench_settings(waits[0]))
    stack = Stack(base)
    started = stack.up()
    try:
        report = prepare_assets(base)
        assert report.data_dir is not None
        body = payload(base, report.data_dir)
        rows = [*_mlflow_rows(base, body, levels, total)]
        for wait in waits:
            rows += _lakeserve_rows(bench_settings(wait), base, body, levels, total, wait)
        return rows
    finally:
        if started:
            stack.down()


def _lakeserve_rows(
    config: Path, base: Settings, body: bytes, levels: list[int], total: int, wait: int
) -> list[dict[str, Any]]:
    cmd = [sys.executable, "-m", "lakeserve.cli", "--config", str(config), "--log-level", "WARNING",
           "serve", "--http", "--workers", "0", "--port", str(OURS_PORT)]  # fmt: skip
    url = f"http://127.0.0.1:{OURS_PORT}/serving-endpoints/{base.endpoint.name}/invocations"
    with process(cmd, f"http://127.0.0.1:{OURS_PORT}/ready"):
        load(url, body, 4, 100)  # warm-up
        name = "lakeserve (default settings)" if wait == DEFAULT_WAIT_MS else f"lakeserve (max_batch_wait_ms {wait})"
        return [{"server": name, "concurrency": c, **load(url, body, c, total)} for c in levels]


def _mlflow_rows(base: Settings, body: bytes, levels: list[int], total: int) -> list[dict[str, Any]]:
    from mlflow.artifacts import download_artifacts
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=base.mlflow.tracking_uri, registry_uri=base.mlflow.registry_uri)
    version = client.get_model_version_by_alias("card_fraud", "champion").version
    path = download_artifacts(
        artifact_uri=client.get_model_version_download_uri("card_fraud", version),
        dst_path=tempfile.mkdtemp(prefix="bench-mlflow-"), tracking_uri=base.mlflow.tracking_uri,
    )  # fmt: skip
    mlflow_bin = str(Path(sys.executable).with_name("mlflow"))
    cmd = [mlflow_bin, "models", "serve", "-m", path, "--env-manager", "local", "-h", "127.0.0.1",
           "-p", str(MLFLOW_PORT), "-w", "1"]  # fmt: skip
    env = {"MLFLOW_TRACKING_URI": str(base.mlflow.tracking_uri),  # it runs `uvicorn` from PATH: the venv's
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # fmt: skip
    with process(cmd, f"http://127.0.0.1:{MLFLOW_PORT}/ping", env):
        url = f"http://127.0.0.1:{MLFLOW_PORT}/invocations"
        load(url, body, 4, 100)
        return [{"server": "mlflow models serve", "concurrency": c, **load(url, body, c, total)} for c in levels]


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| server | concurrency | requests/s | p50 ms | p99 ms |", "|---|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r["concurrency"], r["server"])):
        lines.append(f"| {r['server']} | {r['concurrency']} | {r['rps']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |")
    return "\n".join(lines)


def aims(rows: list[dict[str, Any]]) -> str:
    """The issue's aims for REST with default settings, against MLflow's figures of the same run."""
    by = {(r["server"], r["concurrency"]): r for r in rows}
    ours, theirs = "lakeserve (default settings)", "mlflow models serve"
    out = []
    if (ours, 1) in by and (theirs, 1) in by:
        a, b = by[(ours, 1)]["p50_ms"], by[(theirs, 1)]["p50_ms"]
        out.append(f"- p50 at concurrency 1 <= mlflow's: {'MET' if a <= b else 'NOT MET'} ({a:.1f} vs {b:.1f} ms)")
    if (ours, 32) in by and (theirs, 32) in by:
        ratio = by[(ours, 32)]["rps"] / by[(theirs, 32)]["rps"]
        out.append(
            f"- throughput at concurrency 32 >= 3 x mlflow's: {'MET' if ratio >= 3 else 'NOT MET'} ({ratio:.2f} x)"
        )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=400, help="requests per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--batch-wait-ms", type=int, nargs="+", default=[DEFAULT_WAIT_MS],
                        help="limits.max_batch_wait_ms values to run lakeserve with")  # fmt: skip
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    rows = run(args.concurrency, args.requests, args.batch_wait_ms)
    print(table(rows))
    print(aims(rows))


if __name__ == "__main__":
    main()
