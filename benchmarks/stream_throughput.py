"""Kafka streaming throughput and latency of lakeserve beside a bare echo and a naive scorer, same run.

    .venv/bin/python -m benchmarks.stream_throughput [--requests 5000] [--naive-requests 400]
        [--rates 200,500] [--duration-s 20] [--workers 1] [--profile]

Starts its own Kafka broker (lakeserve's ``KafkaBroker``) in a temporary state folder on free
loopback ports, prepares the demo assets there (``prepare_assets``: data, Feast features,
champion/challenger models), and then, on the same broker and the same request bodies (one
``dataframe_records`` record per request, request-time fields only), each system in a process of
its own consuming in a consumer group while this process produces and reads the answers:

(a) ``floor``: a bare kafka-python echo: poll, produce each value back, flush, auto-commit;
(b) ``naive``: per message one Feast ``get_online_features``, one pyfunc ``predict``, one
    acknowledged produce and one ``write_deltalake`` append;
(c) ``lakeserve``: ``Supervisor`` with ``--workers`` processes, each ``build_worker(settings)``
    running ``worker.loop.run(stop)``, serving the champion model only (so (b) and (c) do the
    same work per record). After the run the inference table must hold exactly one row per request.

Throughput is requests over first request produced → last answer read. Then, for lakeserve
only, a paced producer sends ``--rates`` requests/s for ``--duration-s`` each and the script reports
end-to-end latency (answer read - request produced, matched by key), the model time and the
in-worker scoring time from the inference table, and how long until each request's row is
visible in Delta (a background thread polls the table's version). ``--profile`` adds a run of
one worker under cProfile and prints where its loop spends its time.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import json
import logging
import multiprocessing as mp
import os
import pstats
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lakeserve.features import demo_repo
from lakeserve.jobs.demo_data import request_bodies
from lakeserve.pipelines.embedded.kafka import KafkaBroker, ensure_topics
from lakeserve.pipelines.embedded.ports import free_ports
from lakeserve.pipelines.kafka_settings import KafkaSettings
from lakeserve.pipelines.supervisor import WorkerLink
from lakeserve.settings import Settings, load_settings

log = logging.getLogger("stream_throughput")
SPAWN = mp.get_context("spawn")
TIMEOUT_S = 300.0  # longest wait for a phase's answers


# -- settings and topics ---------------------------------------------------------------------------


def bench_settings(state: Path, flush_interval_ms: int | None) -> Settings:
    """The embedded defaults in ``state`` on free ports, serving the champion only."""
    kafka_port, controller_port = free_ports(2)
    overrides: dict[str, Any] = {
        "stack": {"state_dir": str(state), "kafka_port": kafka_port, "kafka_controller_port": controller_port},
        "kafka": {"bootstrap_servers": [f"127.0.0.1:{kafka_port}"], "session_timeout_ms": 6000},
        "mlflow": {"ui_port": None},
        "endpoint": {
            "served_entities": [{"name": "champion", "entity_name": "card_fraud", "alias": "champion"}],
            "traffic_config": {"routes": [{"served_model_name": "champion", "traffic_percentage": 100}]},
        },
    }
    if flush_interval_ms is not None:
        overrides["tables"] = {"flush_interval_ms": flush_interval_ms}
    return load_settings(overrides=overrides)


def topics_for(settings: Settings, name: str) -> Settings:
    """``settings`` with topics, consumer group and inference table of their own (created now)."""
    kafka = settings.kafka.model_copy(
        update={
            "requests_topic": f"bench.{name}.requests",
            "responses_topic": f"bench.{name}.responses",
            "dead_letter_topic": f"bench.{name}.dead-letters",
            "group_id": f"bench-{name}",
        }
    )
    prefix = "bench_" + name.replace("-", "_")
    capture = settings.endpoint.auto_capture_config.model_copy(update={"table_name_prefix": prefix})
    endpoint = settings.endpoint.model_copy(update={"auto_capture_config": capture})
    ensure_topics(kafka)
    return settings.model_copy(update={"kafka": kafka, "endpoint": endpoint})


def wait_for_group(kafka: KafkaSettings, members: int, timeout_s: float = 180.0) -> None:
    """Until the consumer group is Stable with ``members`` members (so no rebalance mid-run)."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    admin = KafkaAdminClient(**kafka.client_options(), client_id="bench-admin")
    deadline = time.monotonic() + timeout_s
    state: Any = None
    try:
        while True:
            try:
                group = admin.describe_groups([kafka.group_id]).get(kafka.group_id, {})
            except KafkaError as exc:  # e.g. the group coordinator is not elected yet
                group = {"state": repr(exc)}
            state = group.get("group_state") or group.get("state")
            if state == "Stable" and len(group.get("members") or []) == members:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"group {kafka.group_id} not Stable with {members} members: {state}")
            time.sleep(0.2)
    finally:
        admin.close()


# -- load generation and measurement ----------------------------------------------------------------


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds of these processes so far (/proc/<pid>/stat), gone ones counted 0."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime (fields 14 and 15)
    return total


@dataclass
class Arrival:
    at: float  # perf_counter when the answer was read
    status: str | None  # the answer's status header (None for the echo)


class AnswerCollector:
    """Reads a responses topic from the beginning in a thread; first arrival time per key."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self.kafka = kafka
        self.arrivals: dict[bytes, Arrival] = {}
        self.duplicates = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="answers", daemon=True)
        self._thread.start()
        if not self._ready.wait(60):
            raise RuntimeError(f"answer reader on {kafka.responses_topic} did not start")

    def _run(self) -> None:
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(**self.kafka.client_options(), enable_auto_commit=False, fetch_max_wait_ms=50)
        topic = self.kafka.responses_topic
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        self._ready.set()
        try:
            while not self._stop.is_set():
                for records in consumer.poll(timeout_ms=100).values():
                    now = time.perf_counter()
                    with self._lock:
                        for r in records:
                            self._add(r, now)
        finally:
            consumer.close()

    def _add(self, record: Any, now: float) -> None:
        key = bytes(record.key or b"")
        if key in self.arrivals:
            self.duplicates += 1
            return
        status = next((v.decode() for k, v in record.headers or [] if k == "status"), None)
        self.arrivals[key] = Arrival(now, status)

    def wait_for(self, keys: Sequence[bytes], timeout_s: float) -> int:
        """Wait until every key is answered or the deadline; returns how many are answered."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                answered = sum(k in self.arrivals for k in keys)
            if answered == len(keys) or time.monotonic() > deadline:
                return answered
            time.sleep(0.05)

    def get(self, key: bytes) -> Arrival | None:
        with self._lock:
            return self.arrivals.get(key)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


class DeltaWatcher:
    """Polls a Delta table in a thread; records when each client request id's row first appears."""

    def __init__(self, uri: str, interval_s: float = 0.02) -> None:
        self.uri, self.interval_s = uri, interval_s
        self.visible: dict[str, float] = {}
        self.polls = 0
        self._seen_files: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="delta-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from deltalake import DeltaTable

        table: Any = None
        version = -1
        while not self._stop.wait(self.interval_s):
            self.polls += 1
            if table is None:
                if not DeltaTable.is_deltatable(self.uri):
                    continue
                table = DeltaTable(self.uri)
            else:
                table.update_incremental()
            if table.version() != version:
                version = table.version()
                self._read_new_files(table, time.perf_counter())

    def _read_new_files(self, table: Any, seen_at: float) -> None:
        import pyarrow.parquet as pq

        for uri in table.file_uris():
            if uri in self._seen_files:
                continue
            self._seen_files.add(uri)
            ids = pq.read_table(uri.removeprefix("file://"), columns=["client_request_id"]).column(0).to_pylist()
            for cid in ids:
                if cid is not None:
                    self.visible.setdefault(cid, seen_at)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def keys_of(prefix: str, n: int) -> list[bytes]:
    """Keys equal to the bodies' ``client_request_id`` (``request_bodies(prefix=...)``)."""
    return [f"{prefix}-{i}".encode() for i in range(n)]


def produce(
    kafka: KafkaSettings, bodies: Sequence[bytes], keys: Sequence[bytes], rate: float | None = None
) -> dict[bytes, float]:
    """Produce every body (as fast as possible, or paced at ``rate``/s); send time per key."""
    from kafka import KafkaProducer

    producer = KafkaProducer(**kafka.client_options(), linger_ms=1 if rate else 5, acks=1)
    sent: dict[bytes, float] = {}
    start = time.perf_counter()
    try:
        for i, (body, key) in enumerate(zip(bodies, keys, strict=True)):
            if rate:
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            sent[key] = time.perf_counter()
            producer.send(kafka.requests_topic, value=body, key=key)
        producer.flush()
    finally:
        producer.close()
    return sent


@dataclass
class Throughput:
    system: str
    requests: int
    answered: int
    seconds: float
    errors: int
    duplicates: int = 0
    note: str = ""
    nudges: int = 0  # group rebalances the warm-up had to force (see warm_up)
    cpu_s: float = 0.0  # CPU seconds of the system's own processes during the run (not the broker's)

    @property
    def rate(self) -> float:
        return self.answered / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_ms_per_request(self) -> float:
        return 1000 * self.cpu_s / self.answered if self.answered else 0.0


def measure(
    system: str,
    kafka: KafkaSettings,
    collector: AnswerCollector,
    bodies: Sequence[bytes],
    prefix: str,
    timeout_s: float,
    pids: Callable[[], Sequence[int]] = list,
) -> Throughput:
    """First request produced → last answer read, for ``bodies`` produced as fast as possible;
    with the CPU time the processes ``pids()`` spent meanwhile."""
    keys = keys_of(prefix, len(bodies))
    before = collector.duplicates
    processes = list(pids())
    cpu_before = cpu_seconds(processes)
    sent = produce(kafka, bodies, keys)
    answered = collector.wait_for(keys, timeout_s)
    cpu = cpu_seconds(processes) - cpu_before
    arrivals = [a for k in keys if (a := collector.get(k)) is not None]
    end = max((a.at for a in arrivals), default=time.perf_counter())
    errors = sum(a.status not in (None, "200") for a in arrivals)
    seconds = end - min(sent.values())
    return Throughput(system, len(bodies), answered, seconds, errors, collector.duplicates - before, cpu_s=cpu)


def warm_up(kafka: KafkaSettings, collector: AnswerCollector, bodies: Sequence[bytes], tries: int = 4) -> int:
    """Produce ``bodies`` and wait for every answer; returns how many group nudges that took.

    kafka-python's group leader can compute its first assignment before its metadata holds the
    subscribed topic (the range assignor logs "No partition metadata for topic"); the member then
    idles with no partitions until the next metadata refresh (``metadata_max_age_ms``, 5 min).
    A short-lived extra member forces a rebalance with fresh metadata.
    """
    keys = keys_of("warm", len(bodies))
    produce(kafka, bodies, keys)
    for nudges in range(tries):
        if collector.wait_for(keys, 30) == len(keys):
            return nudges
        log.warning("warm-up on %s unanswered after 30 s: nudging group %s", kafka.requests_topic, kafka.group_id)
        nudge_group(kafka)
    raise RuntimeError(f"warm-up on {kafka.requests_topic}: requests still unanswered after {tries} nudges")


def nudge_group(kafka: KafkaSettings, timeout_s: float = 30) -> None:
    """Join the group with a consumer that commits nothing, until assigned, then leave (two rebalances)."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        **kafka.client_options(), group_id=kafka.group_id, enable_auto_commit=False,
        session_timeout_ms=kafka.session_timeout_ms, max_poll_records=1,
    )  # fmt: skip
    consumer.subscribe([kafka.requests_topic])
    deadline = time.monotonic() + timeout_s
    try:
        while not consumer.assignment() and time.monotonic() < deadline:
            consumer.poll(timeout_ms=200)
    finally:
        consumer.close(autocommit=False)


# -- the systems under test, each in a process of its own -------------------------------------------


def echo_main(kafka: KafkaSettings, max_records: int, stop: Any) -> None:
    """(a) The floor: consume in a group, produce each value back under its key, flush per poll."""
    from kafka import KafkaConsumer, KafkaProducer

    consumer = KafkaConsumer(
        **kafka.client_options(), group_id=kafka.group_id, enable_auto_commit=True, auto_offset_reset="earliest",
        session_timeout_ms=kafka.session_timeout_ms, max_poll_records=max_records,
    )  # fmt: skip
    consumer.subscribe([kafka.requests_topic])
    producer = KafkaProducer(**kafka.client_options(), acks="all", linger_ms=2)
    while not stop.is_set():
        for records in consumer.poll(timeout_ms=100).values():
            for r in records:
                producer.send(kafka.responses_topic, value=r.value, key=r.key)
        producer.flush()
    consumer.close()
    producer.close()


class NaiveScorer:
    """(b) What a first attempt looks like: everything once per message."""

    def __init__(self, settings: Settings) -> None:
        import mlflow

        from lakeserve.features.store import feature_store

        assert settings.mlflow.tracking_uri is not None
        mlflow.set_tracking_uri(settings.mlflow.tracking_uri)
        mlflow.set_registry_uri(settings.mlflow.registry_uri or settings.mlflow.tracking_uri)
        self.store = feature_store(settings.feast)
        self.service = self.store.get_feature_service(demo_repo.SERVICE_V1)
        self.model = mlflow.pyfunc.load_model("models:/card_fraud@champion")
        self.inputs = list(self.model.metadata.get_input_schema().input_names())
        self.uri = settings.inference_table_uri  # a table of its own: topics_for gives every phase one

    def score(self, key: bytes | None, body: bytes) -> tuple[bytes, dict[str, Any]]:
        record = json.loads(body)["dataframe_records"][0]
        online = self.store.get_online_features(
            features=self.service, entity_rows=[{demo_repo.ENTITY_KEY: record[demo_repo.ENTITY_KEY]}]
        ).to_dict()
        row = {**{f: online[f][0] for f in demo_repo.V1_FEATURES}, **record}
        out = self.model.predict(pd.DataFrame([row])[self.inputs]).iloc[0]
        prediction = {"prediction": int(out["prediction"]), "probability": float(out["probability"])}
        logged = {**row, **prediction, "key": (key or b"").decode(), "timestamp": datetime.now(UTC)}
        return json.dumps({"predictions": [prediction]}).encode(), logged

    def log(self, row: dict[str, Any]) -> None:
        import pyarrow as pa
        from deltalake import write_deltalake

        write_deltalake(self.uri, pa.Table.from_pylist([row]), mode="append")


def naive_main(settings: Settings, stop: Any) -> None:
    from kafka import KafkaConsumer, KafkaProducer

    kafka = settings.kafka
    scorer = NaiveScorer(settings)
    consumer = KafkaConsumer(
        **kafka.client_options(), group_id=kafka.group_id, enable_auto_commit=True, auto_offset_reset="earliest",
        session_timeout_ms=kafka.session_timeout_ms, max_poll_records=50,
    )  # fmt: skip
    consumer.subscribe([kafka.requests_topic])
    producer = KafkaProducer(**kafka.client_options(), acks="all", linger_ms=0)
    while not stop.is_set():
        for records in consumer.poll(timeout_ms=100).values():
            for r in records:
                answer, row = scorer.score(r.key, r.value)
                producer.send(kafka.responses_topic, value=answer, key=r.key).get(timeout=30)
                scorer.log(row)
    consumer.close()
    producer.close()


def lakeserve_main(stats_dir: Path, profile_from: Any, settings: Settings, link: WorkerLink) -> None:
    """(c) One lakeserve worker: ``build_worker`` + ``loop.run``; writes its loop stats at the end.

    With ``profile_from`` (an event), micro-batches run one by one until it is set (the warm-up),
    then the loop runs under cProfile and the profile is written beside the stats.
    """
    from lakeserve.pipelines.worker import build_worker

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s [worker] %(name)s: %(message)s")
    local = link.stop_event()
    worker = build_worker(settings)
    worker.loop.on_assigned = link.assigned
    profiler = cProfile.Profile() if profile_from is not None else None
    while profile_from is not None and not profile_from.is_set() and not local.is_set():
        worker.loop.run_once()
    started = time.perf_counter()
    with profiler or contextlib.nullcontext():
        worker.loop.run(local)
    stats = {**worker.loop.stats.__dict__, "run_s": time.perf_counter() - started}
    (stats_dir / f"stats-{os.getpid()}.json").write_text(json.dumps(stats, default=str))
    if profiler is not None:
        profiler.dump_stats(stats_dir / f"profile-{os.getpid()}.pstats")


@contextlib.contextmanager
def child(target: Callable[..., None], *args: Any) -> Iterator[Any]:
    """A process running ``target(*args, stop)``; stopped (then killed) on the way out."""
    stop = SPAWN.Event()
    proc = SPAWN.Process(target=target, args=(*args, stop), name=getattr(target, "__name__", "child"))
    proc.start()
    try:
        yield proc
    finally:
        stop.set()
        proc.join(60)
        if proc.is_alive():
            proc.kill()
            proc.join(5)


@contextlib.contextmanager
def lakeserve_workers(settings: Settings, count: int, stats_dir: Path, profile_from: Any = None) -> Iterator[Any]:
    """``Supervisor`` (what ``lakeserve serve --workers N`` runs) with our worker entry point."""
    from lakeserve.pipelines.supervisor import Supervisor

    stats_dir.mkdir(parents=True, exist_ok=True)
    supervisor = Supervisor(settings, count, target=functools.partial(lakeserve_main, stats_dir, profile_from))
    stopped = threading.Event()
    thread = threading.Thread(target=supervisor.run, args=(stopped,), name="supervisor", daemon=True)
    supervisor.start()
    thread.start()
    try:
        supervisor.wait_ready()  # every worker holds partitions
        yield supervisor
    finally:
        stopped.set()
        thread.join(90)


# -- the phases ---------------------------------------------------------------------------------------


@dataclass
class Latency:
    rate: int
    requests: int
    answered: int
    achieved_rate: float
    e2e_ms: list[float]
    model_ms: list[float]
    scoring_ms: list[float]
    visible_ms: list[float]
    visible_count: int


@dataclass
class Run:
    settings: Settings
    customers: pd.DataFrame
    args: argparse.Namespace
    throughputs: list[Throughput] = field(default_factory=list)
    latencies: list[Latency] = field(default_factory=list)
    floor_latencies: list[Latency] = field(default_factory=list)  # the echo, paced at the same rates
    worker_stats: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    profile: str = ""
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:6])  # topics, groups, tables of this run


def floor_phase(run: Run, bodies: Sequence[bytes]) -> None:
    s = topics_for(run.settings, f"floor-{run.run_id}")
    collector = AnswerCollector(s.kafka)
    try:
        with child(echo_main, s.kafka, s.endpoint.limits.max_batch_size) as proc:
            wait_for_group(s.kafka, 1)
            nudges = warm_up(s.kafka, collector, request_bodies(run.customers, 50, seed=5, prefix="warm"))
            result = measure("floor: kafka-python echo", s.kafka, collector, bodies, "tput", TIMEOUT_S,
                             pids=lambda: [proc.pid])  # fmt: skip
            result.nudges = nudges
            run.throughputs.append(result)
            for rate in run.args.rates:
                run.floor_latencies.append(paced(run, s, collector, rate)[0])
    finally:
        collector.close()


def naive_phase(run: Run, bodies: Sequence[bytes]) -> None:
    s = topics_for(run.settings, f"naive-{run.run_id}")
    collector = AnswerCollector(s.kafka)
    try:
        with child(naive_main, s) as proc:
            wait_for_group(s.kafka, 1)
            nudges = warm_up(s.kafka, collector, request_bodies(run.customers, 5, seed=5, prefix="warm"))
            timeout = max(TIMEOUT_S, len(bodies))
            result = measure("naive scorer", s.kafka, collector, bodies, "tput", timeout, pids=lambda: [proc.pid])
            result.nudges = nudges
            run.throughputs.append(result)
    finally:
        collector.close()


def lakeserve_phase(run: Run, bodies: Sequence[bytes], workers: int, with_rates: bool) -> None:
    s = topics_for(run.settings, f"lakeserve{workers}-{run.run_id}")
    collector = AnswerCollector(s.kafka)
    watcher = DeltaWatcher(s.inference_table_uri)
    stats_dir = s.stack.state_dir / f"stats-{workers}-{run.run_id}"
    try:
        with lakeserve_workers(s, workers, stats_dir) as supervisor:
            wait_for_group(s.kafka, workers)
            nudges = warm_up(s.kafka, collector, request_bodies(run.customers, 200, seed=5, prefix="warm"))
            result = measure(f"lakeserve, {workers} worker(s)", s.kafka, collector, bodies, "tput", TIMEOUT_S,
                             pids=supervisor.pids)  # fmt: skip
            result.note = verify_rows(s.inference_table_uri, "tput-", len(bodies))
            result.nudges = nudges
            run.throughputs.append(result)
            if with_rates:
                for rate in run.args.rates:
                    run.latencies.append(rate_phase(run, s, collector, watcher, rate))
    finally:
        watcher.close()
        collector.close()
    run.worker_stats[workers] = [json.loads(p.read_text()) for p in sorted(stats_dir.glob("stats-*.json"))]


def paced(run: Run, s: Settings, collector: AnswerCollector, rate: int) -> tuple[Latency, dict[bytes, float]]:
    """``rate`` requests/s for ``--duration-s``: end-to-end latency, and when each key was sent."""
    n = int(rate * run.args.duration_s)
    prefix = f"r{rate}"
    keys = keys_of(prefix, n)
    sent = produce(s.kafka, request_bodies(run.customers, n, seed=rate, prefix=prefix), keys, rate=rate)
    answered = collector.wait_for(keys, 120)
    e2e = [(a.at - sent[k]) * 1000 for k in keys if (a := collector.get(k)) is not None]
    achieved = (n - 1) / (max(sent.values()) - min(sent.values())) if n > 1 else 0.0
    return Latency(rate, n, answered, achieved, e2e, [], [], [], 0), sent


def rate_phase(run: Run, s: Settings, collector: AnswerCollector, watcher: DeltaWatcher, rate: int) -> Latency:
    """:func:`paced`, then the model and in-worker times from the table and the Delta visibility."""
    lat, sent = paced(run, s, collector, rate)
    flush_s = s.tables.flush_interval_ms / 1000
    deadline = time.monotonic() + 30 + 3 * flush_s
    while sum(k.decode() in watcher.visible for k in sent) < lat.requests and time.monotonic() < deadline:
        time.sleep(0.1)
    seen = watcher.visible
    lat.visible_ms = [(seen[k.decode()] - t) * 1000 for k, t in sent.items() if k.decode() in seen]
    lat.visible_count = len(lat.visible_ms)
    lat.model_ms, lat.scoring_ms = table_times(s.inference_table_uri, f"r{rate}-")
    return lat


def table_times(uri: str, prefix: str) -> tuple[list[float], list[float]]:
    """Model time (``execution_time_ms``) and in-worker time (``latency_ms``) of the phase's rows."""
    from deltalake import DeltaTable

    frame = DeltaTable(uri).to_pandas(columns=["client_request_id", "execution_time_ms", "latency_ms"])
    rows = frame[frame["client_request_id"].str.startswith(prefix, na=False)]
    return rows["execution_time_ms"].astype(float).tolist(), rows["latency_ms"].astype(float).tolist()


def verify_rows(uri: str, prefix: str, expected: int, timeout_s: float = 30) -> str:
    """Wait for the phase's rows in the inference table; exactly ``expected`` distinct requests, once each."""
    from deltalake import DeltaTable

    deadline = time.monotonic() + timeout_s
    while True:
        frame = DeltaTable(uri).to_pandas(columns=["client_request_id", "request_id"])
        rows = frame[frame["client_request_id"].str.startswith(prefix, na=False)]
        if len(rows) >= expected or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    distinct = rows["request_id"].nunique()
    verdict = "OK" if len(rows) == expected == distinct else "MISMATCH"
    return f"Delta rows {len(rows)}, distinct requests {distinct}, expected {expected}: {verdict}"


def profile_phase(run: Run, bodies: Sequence[bytes]) -> None:
    """One worker under cProfile over the same bodies; the loop's stages by cumulative time."""
    s = topics_for(run.settings, f"profiled-{run.run_id}")
    collector = AnswerCollector(s.kafka)
    stats_dir = s.stack.state_dir / f"stats-profiled-{run.run_id}"
    profile_from = SPAWN.Event()
    try:
        with lakeserve_workers(s, 1, stats_dir, profile_from):
            wait_for_group(s.kafka, 1)
            nudges = warm_up(s.kafka, collector, request_bodies(run.customers, 200, seed=5, prefix="warm"))
            profile_from.set()
            result = measure("lakeserve under cProfile", s.kafka, collector, bodies, "tput", TIMEOUT_S)
            result.nudges = nudges
    finally:
        collector.close()
    profiles = sorted(stats_dir.glob("profile-*.pstats"))
    if profiles:
        run.profile = f"{result.rate:,.0f} msg/s under cProfile (warm-up not profiled)\n" + stage_report(profiles[0])
        kept = Path(tempfile.gettempdir()) / "lakeserve-stream-throughput.pstats"
        kept.write_bytes(profiles[0].read_bytes())
        run.profile += f"\n(full profile: {kept}; group nudges: {nudges})"


STAGES: list[tuple[str, str, str]] = [  # (label, file suffix, function)
    ("loop.run_once (everything)", "pipelines/delivery_loop.py", "run_once"),
    ("1 poll (KafkaRequestSource.poll)", "pipelines/kafka_source.py", "poll"),
    ("  consumer.poll (kafka-python)", "kafka/consumer/group.py", "poll"),
    ("  request records (_request)", "pipelines/kafka_source.py", "_request"),
    ("2 score (ScoringCore.score)", "scoring/core.py", "score"),
    ("  parse bodies", "scoring/requests.py", "parse"),
    ("  feast lookup (FeastFeatureLookup.get)", "features/feast_lookup.py", "get"),
    ("  conform to signature", "scoring/models.py", "conform"),
    ("  model predict (MlflowServedModel.predict)", "scoring/models.py", "predict"),
    ("3 answer (KafkaResponseSink.deliver)", "pipelines/kafka_sinks.py", "deliver"),
    ("4 rows (InferenceLog.add -> to_arrow)", "monitoring/inference_log.py", "add"),
    ("5 flush (InferenceLog.flush)", "monitoring/inference_log.py", "flush"),
    ("  delta append (DeltaInferenceWriter.append)", "monitoring/delta_writer.py", "append"),
    ("  txn versions (transaction_versions)", "monitoring/delta_writer.py", "transaction_versions"),
    ("  offset commit (KafkaRequestSource.commit)", "pipelines/kafka_source.py", "commit"),
]


def stage_report(path: Path) -> str:
    raw: dict[tuple[str, int, str], tuple[Any, ...]] = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    total = next((v[3] for (f, _, fn), v in raw.items() if f.endswith(STAGES[0][1]) and fn == "run_once"), 0.0)
    lines = ["| stage | calls | cumulative s | share of run_once |", "|---|---:|---:|---:|"]
    for label, suffix, function in STAGES:
        hits = [v for (f, _, fn), v in raw.items() if f.endswith(suffix) and fn == function]
        calls, cum = sum(v[1] for v in hits), sum(v[3] for v in hits)
        share = f"{cum / total:.0%}" if total else "-"
        lines.append(f"| {label} | {calls} | {cum:.2f} | {share} |")
    top = sorted(raw.items(), key=lambda kv: kv[1][2], reverse=True)[:12]
    lines += ["", "top functions by own time:", "| function | calls | own s |", "|---|---:|---:|"]
    lines += [f"| {Path(f).name}:{line} {fn} | {v[1]} | {v[2]:.2f} |" for (f, line, fn), v in top]
    return "\n".join(lines)


# -- report ------------------------------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> str:
    return f"{np.percentile(values, q):.0f}" if values else "-"


def throughput_table(run: Run) -> str:
    floor = next((t for t in run.throughputs if t.system.startswith("floor")), None)
    naive = next((t.rate for t in run.throughputs if t.system.startswith("naive")), 0.0)
    lines = [
        "| system | requests | answered | seconds | msg/s | x floor | x naive | CPU ms/request | CPU x floor "
        "| errors | dup answers |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in run.throughputs:
        x_floor = f"{t.rate / floor.rate:.2f}" if floor and floor.rate else "-"
        x_naive = f"{t.rate / naive:.1f}" if naive else "-"
        x_cpu = f"{t.cpu_ms_per_request / floor.cpu_ms_per_request:.1f}" if floor and floor.cpu_s else "-"
        lines.append(
            f"| {t.system} | {t.requests} | {t.answered} | {t.seconds:.2f} | {t.rate:,.0f} | {x_floor} | {x_naive} "
            f"| {t.cpu_ms_per_request:.3f} | {x_cpu} | {t.errors} | {t.duplicates} |"
        )
    lines += [f"- {t.system}: {t.note}" for t in run.throughputs if t.note]
    lines += [
        f"- {t.system}: the group had to be nudged {t.nudges}x before it served every partition (see warm_up)"
        for t in run.throughputs
        if t.nudges
    ]
    if floor is None or not floor.rate:
        return "\n".join(lines)
    for t in run.throughputs:
        if not t.system.startswith("lakeserve"):
            continue
        workers = int(t.system.split(", ")[1].split()[0])
        aim = 0.8 if workers == 1 else 1.0
        ratio, cpu = t.rate / floor.rate, t.cpu_ms_per_request / floor.cpu_ms_per_request if floor.cpu_s else 0.0
        lines.append(
            f"- aims for {t.system}: >= {aim} x floor {met(ratio >= aim)} ({ratio:.2f}); "
            f"CPU per request <= 3 x floor {met(0 < cpu <= 3)} ({cpu:.1f}); >= 10 x naive "
            f"{met(bool(naive) and t.rate >= 10 * naive)} ({t.rate / naive if naive else 0:.1f})"
        )
    return "\n".join(lines)


def met(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def overhead_table(run: Run) -> str:
    """lakeserve's e2e minus the echo's e2e minus the model time, at p50 and p99, per rate."""
    lines = [
        "| req/s | floor e2e p50 / p99 ms | lakeserve e2e p50 / p99 ms | model p50 / p99 ms "
        "| overhead p50 ms | overhead p99 ms | aim: overhead p99 <= 20 ms |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    floors = {lat.rate: lat for lat in run.floor_latencies}
    for lat in run.latencies:
        floor = floors.get(lat.rate)
        if floor is None or not lat.e2e_ms or not floor.e2e_ms or not lat.model_ms:
            continue
        p = {q: float(np.percentile(lat.e2e_ms, q)) for q in (50, 99)}
        f = {q: float(np.percentile(floor.e2e_ms, q)) for q in (50, 99)}
        m = {q: float(np.percentile(lat.model_ms, q)) for q in (50, 99)}
        over = {q: p[q] - f[q] - m[q] for q in (50, 99)}
        lines.append(
            f"| {lat.rate} | {f[50]:.0f} / {f[99]:.0f} | {p[50]:.0f} / {p[99]:.0f} | {m[50]:.1f} / {m[99]:.1f} "
            f"| {over[50]:.0f} | {over[99]:.0f} | {met(over[99] <= 20)} |"
        )
    return "\n".join(lines)


def latency_table(run: Run) -> str:
    interval = run.settings.tables.flush_interval_ms
    lines = [
        "| target req/s | achieved | requests | answered | e2e p50 ms | e2e p99 ms | model p50 ms | model p99 ms "
        "| in-worker p50 ms | in-worker p99 ms | Delta visible p50 ms | p99 ms | rows seen | flush_interval_ms |",
        "|" + "---:|" * 14,
    ]
    for lat in run.latencies:
        lines.append(
            f"| {lat.rate} | {lat.achieved_rate:.0f} | {lat.requests} | {lat.answered} | {pct(lat.e2e_ms, 50)} "
            f"| {pct(lat.e2e_ms, 99)} | {pct(lat.model_ms, 50)} | {pct(lat.model_ms, 99)} | {pct(lat.scoring_ms, 50)} "
            f"| {pct(lat.scoring_ms, 99)} | {pct(lat.visible_ms, 50)} | {pct(lat.visible_ms, 99)} "
            f"| {lat.visible_count} | {interval} |"
        )
    return "\n".join(lines)


def stats_lines(run: Run) -> str:
    out = []
    for workers, stats in run.worker_stats.items():
        for st in stats:
            batches = max(1, int(st.get("batches", 0)))
            out.append(
                f"- lakeserve {workers} worker(s), one worker's loop: {st.get('requests')} requests in "
                f"{st.get('batches')} micro-batches (mean {int(st.get('requests', 0)) / batches:.1f})"
            )
    return "\n".join(out)


def report(run: Run) -> str:
    s, a = run.settings, run.args
    limits = s.endpoint.limits
    parts = [
        f"Streaming benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f} at the end",
        f"settings: limits.max_batch_size={limits.max_batch_size}, max_batch_wait_ms={limits.max_batch_wait_ms}, "
        f"tables.flush_rows={s.tables.flush_rows}, flush_interval_ms={s.tables.flush_interval_ms}, "
        f"kafka.partitions={s.kafka.partitions}; requests={a.requests}, naive={a.naive_requests}, "
        f"rates={a.rates} for {a.duration_s} s, workers={a.workers}",
        "",
        "Throughput (first request produced -> last answer read):",
        throughput_table(run),
        stats_lines(run),
        "",
        f"lakeserve ({a.workers[0]} worker(s)) at a steady rate (e2e = answer read - request produced; model = "
        "execution_time_ms; in-worker = latency_ms, poll to scored; Delta visible = row readable - request produced):",
        latency_table(run),
        "",
        "Overhead over the floor (the echo paced at the same rates, same run): lakeserve e2e - echo e2e - model:",
        overhead_table(run),
    ]
    if run.profile:
        parts += ["", "Where one worker's loop spends its time (cProfile, separate run):", run.profile]
    return "\n".join(parts)


# -- main --------------------------------------------------------------------------------------------


def run_all(args: argparse.Namespace, state: Path) -> str:
    from lakeserve.jobs.demo import prepare_assets

    settings = bench_settings(state, args.flush_interval_ms)
    broker = KafkaBroker(settings.stack)
    try:
        kafka_log = logging.getLogger("kafka")
        kafka_log.setLevel(logging.CRITICAL)  # refused connections while the broker starts
        broker.start()
        kafka_log.setLevel(logging.ERROR)
        log.info("broker on %s; preparing demo assets (1-2 min)", broker.bootstrap)
        prepare = prepare_assets(settings)
        assert prepare.data_dir is not None
        customers = pd.read_parquet(prepare.data_dir / "customers.parquet")
        run = Run(settings, customers, args)
        bodies = request_bodies(customers, args.requests, prefix="tput")
        log.info("phase floor")
        floor_phase(run, bodies)
        log.info("phase naive")
        naive_phase(run, bodies[: args.naive_requests])
        for i, workers in enumerate(args.workers):
            log.info("phase lakeserve, %d worker(s)", workers)
            lakeserve_phase(run, bodies, workers, with_rates=i == 0)
        if args.profile:
            log.info("phase profile")
            profile_phase(run, bodies)
        return report(run)
    finally:
        broker.stop()


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--requests", type=int, default=5000, help="requests for the floor and lakeserve throughput")
    p.add_argument("--naive-requests", type=int, default=400, help="requests for the naive scorer (slow)")
    p.add_argument("--rates", type=_ints, default=[200, 500], help="paced rates for the latency runs, e.g. 200,500")
    p.add_argument("--duration-s", type=float, default=20.0, help="seconds per paced rate")
    p.add_argument("--workers", type=_ints, default=[1], help="lakeserve worker processes, e.g. 1 or 1,2")
    p.add_argument("--flush-interval-ms", type=int, default=None, help="tables.flush_interval_ms (default 1000)")
    p.add_argument("--profile", action="store_true", help="add a cProfile run of one worker")
    p.add_argument("--state-dir", help="reuse this state folder (demo assets are kept); default: a temporary one")
    p.add_argument("--keep", action="store_true", help="keep the temporary state folder")
    return p.parse_args(argv)


def main() -> None:
    args = parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for noisy in ("mlflow", "feast", "alembic", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    reuse = args.state_dir is not None
    state = Path(args.state_dir) if reuse else Path(tempfile.mkdtemp(prefix="lakeserve-bench-stream-")) / "state"
    try:
        print(run_all(args, state))
    finally:
        if args.keep or reuse:
            print(f"state kept in {state}")
        else:
            shutil.rmtree(state.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
