"""Faults under traffic: requests sent, answered, lost and duplicated, and rows logged, per fault.

    .venv/bin/python -m benchmarks.chaos [--rate 100] [--duration-s 20] [--fault-s 8] [--faults ...]

Starts its own Kafka broker and the demo assets in a temporary state folder (as
``benchmarks.stream_throughput`` does), then for each fault: one lakeserve worker process
(``Supervisor``) on topics of its own, a producer pacing ``--rate`` requests/s for
``--duration-s``, and the fault injected into the real component ``--fault-s`` after the start
for ``--fault-s`` seconds:

- ``none``: the baseline of the same run;
- ``feast-locked``: the SQLite online store under an exclusive lock (readers: "database is locked"),
  shorter than ``kafka.outage_deadline_ms``;
- ``feast-down``: the same with a 2 s outage deadline, so requests are answered 503;
- ``delta-refuses``: the table's partition folders replaced by files (appends fail);
- ``worker-killed``: the worker process SIGKILLed (the supervisor restarts it);
- ``broker-hung``: the broker's process stopped with SIGSTOP, then SIGCONT.

After the traffic, every request must be answered: ``lost`` counts requests with no answer
within the deadline, ``dup answers`` answers beyond the first per request (at-least-once
answers), ``rows`` and ``dup rows`` the inference table (exactly-once rows). Figures are
recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import sqlite3
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
from deltalake import DeltaTable

from benchmarks.stream_throughput import AnswerCollector, bench_settings, keys_of, produce, topics_for
from lakeserve.jobs.demo_data import request_bodies
from lakeserve.pipelines.embedded.kafka import KafkaBroker
from lakeserve.pipelines.supervisor import Supervisor
from lakeserve.settings import Settings

log = logging.getLogger("chaos")
Fault = Callable[[Settings, Supervisor, KafkaBroker], contextlib.AbstractContextManager[None]]


@contextlib.contextmanager
def no_fault(settings: Settings, supervisor: Supervisor, broker: KafkaBroker) -> Iterator[None]:
    yield


@contextlib.contextmanager
def feast_locked(settings: Settings, supervisor: Supervisor, broker: KafkaBroker) -> Iterator[None]:
    assert settings.feast.repo_path is not None
    conn = sqlite3.connect(settings.feast.repo_path / "online_store.db", timeout=30, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        conn.execute("COMMIT")
        conn.close()


@contextlib.contextmanager
def delta_refuses(settings: Settings, supervisor: Supervisor, broker: KafkaBroker) -> Iterator[None]:
    table, today = Path(settings.inference_table_uri), datetime.now(UTC).date()
    blocked = [table / f"date={d.isoformat()}" for d in (today, today + timedelta(days=1))]
    for path in blocked:
        if path.is_dir():
            path.rename(path.with_name(path.name + ".aside"))
        path.write_text("not a folder")
    try:
        yield
    finally:
        for path in blocked:
            path.unlink()
            aside = path.with_name(path.name + ".aside")
            if aside.is_dir():
                aside.rename(path)


@contextlib.contextmanager
def worker_killed(settings: Settings, supervisor: Supervisor, broker: KafkaBroker) -> Iterator[None]:
    for pid in supervisor.pids():
        os.kill(pid, signal.SIGKILL)
    yield


@contextlib.contextmanager
def broker_hung(settings: Settings, supervisor: Supervisor, broker: KafkaBroker) -> Iterator[None]:
    pid = broker.process.pid()
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


FAULTS: dict[str, tuple[Fault, dict[str, int], float]] = {  # fault, kafka settings, how long it lasts
    "none": (no_fault, {}, 1.0),
    "feast-locked": (feast_locked, {}, 1.0),
    # SQLite readers wait 5 s for a lock before they fail: the outage must outlast that and the deadline
    "feast-down": (feast_locked, {"outage_deadline_ms": 1000}, 2.5),
    "delta-refuses": (delta_refuses, {}, 1.0),
    "worker-killed": (worker_killed, {}, 1.0),
    "broker-hung": (broker_hung, {}, 1.0),
}


@dataclass
class Outcome:
    fault: str
    sent: int
    answered: int
    duplicates: int
    statuses: Counter[str]
    rows: int
    duplicate_rows: int
    seconds: float  # first request sent to last answer read
    longest_wait_s: float  # the slowest answer, sent to read

    @property
    def lost(self) -> int:
        return self.sent - self.answered


def run_fault(
    base: Settings, customers: pd.DataFrame, name: str, args: argparse.Namespace, broker: KafkaBroker
) -> Outcome:
    fault, kafka, length = FAULTS[name]
    settings = topics_for(base, f"chaos-{name}")
    settings = settings.model_copy(update={"kafka": settings.kafka.model_copy(update=kafka)})
    count = int(args.rate * args.duration_s)
    bodies, keys = request_bodies(customers, count, seed=7, prefix=name), keys_of(name, count)
    supervisor = Supervisor(settings, 1, restart_backoff_s=0.2)
    stopped = threading.Event()
    runner = threading.Thread(target=supervisor.run, args=(stopped,), daemon=True)
    runner.start()
    collector = AnswerCollector(settings.kafka)
    try:
        supervisor.wait_ready()
        sent: dict[bytes, float] = {}
        producer = threading.Thread(target=lambda: sent.update(produce(settings.kafka, bodies, keys, args.rate)))
        started = time.perf_counter()
        producer.start()
        threading.Event().wait(args.fault_s)  # the traffic's first seconds, unharmed
        with fault(settings, supervisor, broker):
            threading.Event().wait(args.fault_s * length)  # the fault lasts this long
        producer.join()
        answered = collector.wait_for(keys, timeout_s=args.deadline_s)
        seconds = max((a.at for k in keys if (a := collector.get(k))), default=started) - started
        waits = [a.at - sent[k] for k in keys if (a := collector.get(k)) is not None and k in sent]
    finally:
        stopped.set()
        runner.join(timeout=60)
        collector.close()
    rows = DeltaTable(settings.inference_table_uri).to_pandas(columns=["request_id"])
    statuses = Counter(a.status or "?" for k in keys if (a := collector.get(k)) is not None)
    per_request = rows.groupby("request_id").size()
    return Outcome(name, count, answered, collector.duplicates, statuses, len(rows),
                   int((per_request - 1).clip(lower=0).sum()), seconds, max(waits, default=0.0))  # fmt: skip


def report(outcomes: Sequence[Outcome], args: argparse.Namespace) -> str:
    lines = [
        f"{args.rate:.0f} requests/s for {args.duration_s:.0f} s; each fault from {args.fault_s:.0f} s, "
        f"lasting {args.fault_s:.0f} s ({args.fault_s * 2.5:.0f} s for feast-down)",
        "",
        "| fault | sent | answered | lost | dup answers | statuses | rows | dup rows | seconds | slowest answer s |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for o in outcomes:
        statuses = ", ".join(f"{s}: {n}" for s, n in sorted(o.statuses.items()))
        lines.append(f"| {o.fault} | {o.sent} | {o.answered} | {o.lost} | {o.duplicates} | {statuses} | {o.rows} "
                     f"| {o.duplicate_rows} | {o.seconds:.1f} | {o.longest_wait_s:.1f} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--rate", type=float, default=100.0)
    p.add_argument("--duration-s", type=float, default=20.0)
    p.add_argument("--fault-s", type=float, default=6.0)
    p.add_argument("--deadline-s", type=float, default=120.0, help="longest wait for the last answers")
    p.add_argument("--faults", default=",".join(FAULTS), help="comma-separated, of: " + ", ".join(FAULTS))
    args = p.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for noisy in ("mlflow", "feast", "alembic", "urllib3", "kafka", "lakeserve"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    state = Path(tempfile.mkdtemp(prefix="lakeserve-bench-chaos-")) / "state"
    from lakeserve.jobs.demo import prepare_assets

    settings = bench_settings(state, None)
    broker = KafkaBroker(settings.stack)
    try:
        broker.start()
        assets = prepare_assets(settings)
        assert assets.data_dir is not None
        customers = pd.read_parquet(assets.data_dir / "customers.parquet")
        outcomes = []
        for name in args.faults.split(","):
            log.info("fault %s", name)
            outcomes.append(run_fault(settings, customers, name, args, broker))
            log.info("%s", json.dumps(outcomes[-1].__dict__, default=str))
        print(report(outcomes, args))
    finally:
        broker.stop()
        shutil.rmtree(state.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
