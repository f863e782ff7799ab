"""The supervisor's metrics endpoint for Kafka workers (``lakeserve serve`` without ``--http``):
``/ready`` follows every worker's assignment, a restart included; ``/metrics`` shows the worker
processes' requests, batch sizes and per-partition consumer lag; a partition moved away loses
its lag series; the ``metrics`` settings name the field at fault."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from conftest_helpers import answers_for, body, feast_locked, produce, settings_for
from netutil import free_ports
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from supervisor_targets import gated_worker

from lakeserve.errors import ConfigError
from lakeserve.pipelines.metrics import ServiceMetrics
from lakeserve.pipelines.metrics_server import MetricsServer, Readiness
from lakeserve.pipelines.metrics_settings import MetricsSettings
from lakeserve.pipelines.settings import write_settings
from lakeserve.pipelines.supervisor import Supervisor
from lakeserve.settings import Settings, load_settings

LAG = "lakeserve_kafka_consumer_lag_messages"


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {timeout_s} s"
        threading.Event().wait(0.05)


@contextmanager
def endpoint(metrics: ServiceMetrics, readiness: Readiness) -> Iterator[str]:
    """The metrics endpoint on a free loopback port; yields its URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = MetricsServer(MetricsSettings(), metrics, readiness, sock=sock)
    server.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.stop()
        sock.close()


def ready(url: str) -> httpx.Response:
    return httpx.get(f"{url}/ready", timeout=10)


def samples(url: str, name: str, **labels: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample ``name`` scraped from ``/metrics`` whose labels include ``labels``, by label set."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    }


def total(url: str, name: str, **labels: str) -> float:
    return sum(samples(url, name, **labels).values())


def test_ready_waits_for_every_worker_and_for_a_restarted_one(tmp_path: Path) -> None:
    settings = Settings(stack={"state_dir": tmp_path})
    gate = settings.stack.state_dir / "gate"
    metrics = ServiceMetrics(CollectorRegistry(), settings.endpoint.name)
    supervisor = Supervisor(settings, 2, target=gated_worker, restart_backoff_s=0.1, metrics=metrics)
    with endpoint(metrics, supervisor.readiness) as url:
        before = ready(url)
        assert before.status_code == 503
        assert before.json() == {"status": "not ready", "workers": {"0": "starting", "1": "starting"}}
        assert httpx.get(f"{url}/health", timeout=10).json() == {"status": "ok"}

        stopped = threading.Event()
        runner = threading.Thread(target=supervisor.run, args=(stopped,), daemon=True)
        supervisor.start()
        runner.start()
        try:
            wait_until(lambda: len(supervisor.pids()) == 2, 60, "two workers run")
            assert ready(url).status_code == 503  # alive, but no partitions reported yet (the gate is shut)
            gate.touch()
            wait_until(lambda: ready(url).status_code == 200, 60, "/ready answers 200")
            assert ready(url).json() == {"status": "ready", "workers": {"0": "ready", "1": "ready"}}

            gate.unlink()  # the replacement will not report itself assigned until the gate opens again
            victim = supervisor.pids()[0]
            os.kill(victim, signal.SIGKILL)
            wait_until(lambda: ready(url).status_code == 503, 30, "/ready answers 503 once a worker died")
            wait_until(lambda: supervisor.restarts == 1 and len(supervisor.pids()) == 2, 60, "the worker restarted")
            answer = ready(url)
            assert answer.status_code == 503
            assert sorted(answer.json()["workers"].values()) == ["ready", "starting"]
            gate.touch()
            wait_until(lambda: ready(url).status_code == 200, 60, "/ready answers 200 after the restart")
        finally:
            stopped.set()
            runner.join(timeout=30)
        assert not runner.is_alive()
        after = ready(url)
        assert after.status_code == 503
        assert after.json()["workers"] == {"0": "stopping", "1": "stopping"}


def test_a_partition_moved_away_loses_its_lag_series() -> None:
    metrics = ServiceMetrics(CollectorRegistry(), "ep")

    def lag(partition: int) -> float | None:
        return metrics.registry.get_sample_value(LAG, {"endpoint": "ep", "topic": "t", "partition": str(partition)})

    metrics.consumer_lag({("t", 0): 5, ("t", 1): 3}, reporter=0)
    assert (lag(0), lag(1)) == (5, 3)
    metrics.consumer_lag({("t", 1): 2}, reporter=1)  # the group moved partition 1 to worker 1
    metrics.consumer_lag({("t", 0): 4, ("t", 1): 3}, reporter=0)  # worker 0 had not heard yet
    metrics.consumer_lag({("t", 0): 4}, reporter=0)
    assert (lag(0), lag(1)) == (4, 3)  # worker 1 holds it: its series stays, updated on its next report
    metrics.consumer_lag({("t", 1): 1}, reporter=1)
    assert lag(1) == 1
    metrics.reporter_gone(1)  # worker 1 died: nobody reports partition 1 now
    assert (lag(0), lag(1)) == (4, None)
    metrics.consumer_lag({}, reporter=0)  # revoked everything
    assert lag(0) is None


def test_metrics_settings_name_the_field_at_fault(tmp_path: Path) -> None:
    empty = tmp_path / "none.yaml"
    empty.write_text("{}\n")
    with pytest.raises(ConfigError, match=r"metrics\.port \(8080\) is also http\.port"):
        load_settings(empty, overrides={"metrics": {"port": 8080}})
    with pytest.raises(ConfigError, match=r"metrics\.host"):
        load_settings(empty, overrides={"metrics": {"host": "not a host"}})
    with pytest.raises(ConfigError, match=r"metrics\.port"):
        load_settings(empty, overrides={"metrics": {"port": 70000}})
    assert not load_settings(empty, overrides={"metrics": {"port": 0}}).metrics.enabled
    assert load_settings(empty).metrics == MetricsSettings(host="127.0.0.1", port=9464)


def test_kafka_workers_serve_lag_batches_and_requests(stack: Settings, demo_assets: object, tmp_path: Path) -> None:
    """``lakeserve serve --workers 2``, its own process: /ready 503 while the workers load, 200
    once both hold partitions; after traffic, /metrics counts every answered request, has a lag
    series per partition of the requests topic at 0 once drained, and the batch sizes."""
    port = free_ports(1)[0]
    settings = settings_for(stack, "metrics-endpoint")
    settings = settings.model_copy(update={"metrics": MetricsSettings(port=port)})
    config = write_settings(settings, tmp_path / "lakeserve.yaml")
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "lakeserve.cli", "--config", str(config), "serve", "--workers", "2"],
        stdout=log, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_until(lambda: proc.poll() is not None or _answers(f"{url}/health"), 60, "the metrics endpoint listens")
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
        first = ready(url)  # the endpoint listens before the workers start loading their models
        assert first.status_code == 503, first.text
        wait_until(lambda: ready(url).status_code == 200, 180, "both workers hold partitions")

        count = 40
        produce(settings, [body(customer_id=1 + i % 10) for i in range(count)])
        answered = answers_for(settings, count, timeout_s=180)
        assert len(answered) == count
        kafka = {"transport": "kafka", "endpoint": settings.endpoint.name}
        wait_until(lambda: total(url, "lakeserve_requests_total", **kafka) == count, 60, "every answer counted")
        topic = settings.kafka.requests_topic
        drained = {str(p): 0.0 for p in range(settings.kafka.partitions)}

        def lag_by_partition() -> dict[str, float]:
            return {dict(k)["partition"]: v for k, v in samples(url, LAG, topic=topic).items()}

        wait_until(lambda: lag_by_partition() == drained, 60, "a lag of 0 on every partition of the requests topic")
        assert total(url, "lakeserve_batch_size_requests_count", **kafka) > 0
        assert total(url, "lakeserve_batch_size_requests_sum", **kafka) == count
        assert total(url, "lakeserve_requests_total", **kafka) == count  # not more: each answer counted once
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
        log.close()
    assert proc.returncode == 0, (tmp_path / "serve.log").read_text()[-3000:]


def test_a_feast_outage_shows_as_retries_then_outage_seconds(stack: Settings, demo_assets: object) -> None:
    """A worker process under the supervisor, the online store locked while requests wait: the
    endpoint counts the lookups retried, and the outage's seconds once Feast answers again."""
    settings = settings_for(stack, "metrics-outage")
    quick = {"retry_backoff_initial_ms": 50, "retry_backoff_max_ms": 500, "outage_deadline_ms": 120_000}
    settings = settings.model_copy(update={"kafka": settings.kafka.model_copy(update=quick)})
    metrics = ServiceMetrics(CollectorRegistry(), settings.endpoint.name)
    supervisor = Supervisor(settings, 1, metrics=metrics)
    feast = {"endpoint": settings.endpoint.name, "component": "feast"}
    retries, outage = "lakeserve_component_retries_total", "lakeserve_component_outage_seconds_total"
    with endpoint(metrics, supervisor.readiness) as url:
        stopped = threading.Event()
        runner = threading.Thread(target=supervisor.run, args=(stopped,), daemon=True)
        supervisor.start()
        runner.start()
        try:
            wait_until(lambda: ready(url).status_code == 200, 180, "the worker holds partitions")
            with feast_locked(settings):
                produce(settings, [body(customer_id=1 + i) for i in range(5)])
                wait_until(lambda: total(url, retries, **feast) >= 2, 120, "failed lookups counted as retries")
                assert total(url, outage, **feast) == 0  # still going on: counted once it ends
            answered = answers_for(settings, 5, timeout_s=120)
            wait_until(lambda: total(url, outage, **feast) > 0, 60, "the ended outage's seconds counted")
        finally:
            stopped.set()
            runner.join(timeout=60)
    assert {int(a.headers["status"]) for a in answered.values()} == {200}  # waited out, not refused


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False
