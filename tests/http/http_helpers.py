"""Helpers for the REST tests: settings of their own, a server in a thread, readiness polling."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pandas as pd
from deltalake import DeltaTable
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from lakeserve.pipelines.http import run_http
from lakeserve.pipelines.metrics import ServiceMetrics
from lakeserve.settings import Settings


def http_settings_for(base: Settings, name: str, http: dict[str, Any] | None = None, **endpoint: Any) -> Settings:
    """Settings with an inference table of their own; ``http`` and endpoint fields overridden."""
    capture = base.endpoint.auto_capture_config.model_copy(update={"table_name_prefix": name.replace("-", "_")})
    ep = base.endpoint.model_copy(update={"auto_capture_config": capture, **endpoint})
    tables = base.tables.model_copy(update={"flush_rows": 200, "flush_interval_ms": 200})
    data = {**base.model_dump(), "endpoint": ep.model_dump(), "tables": tables.model_dump()}
    data["http"] = {**base.http.model_dump(), **(http or {})}
    return Settings(**data)


@dataclass
class Server:
    settings: Settings
    url: str
    metrics: ServiceMetrics
    verify: ssl.SSLContext | bool = True  # the CA context of a TLS server

    @property
    def invocations(self) -> str:
        return f"{self.url}/serving-endpoints/{self.settings.endpoint.name}/invocations"

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


@contextmanager
def serving(settings: Settings, ready_within_s: float = 120, verify: ssl.SSLContext | None = None) -> Iterator[Server]:
    """``run_http`` in a thread on a free loopback port; yields once ``/ready`` answers 200.
    ``verify``: the server speaks TLS (``http.ssl_certfile``); the client trusts this context."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    url = f"{'https' if verify is not None else 'http'}://127.0.0.1:{sock.getsockname()[1]}"
    trust: ssl.SSLContext | bool = verify if verify is not None else True
    metrics = ServiceMetrics(CollectorRegistry(), settings.endpoint.name)
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            run_http(settings, stop, metrics=metrics, sock=sock)
        except BaseException as exc:  # surfaced to the test below
            errors.append(exc)

    thread = threading.Thread(target=run, name="rest-under-test", daemon=True)
    thread.start()
    try:
        wait_until(lambda: bool(errors) or _ready(url, trust), ready_within_s, "the server did not become ready")
        assert not errors, errors
        yield Server(settings, url, metrics, trust)
    finally:
        stop.set()
        thread.join(timeout=60)
        sock.close()
    assert not thread.is_alive(), "the server did not stop in 60 s"


def _ready(url: str, verify: ssl.SSLContext | bool) -> bool:
    try:
        return httpx.get(f"{url}/ready", timeout=2, verify=verify).status_code == 200
    except httpx.TransportError:
        return False


def wait_until(condition: Callable[[], bool], timeout_s: float, message: str) -> None:
    """Poll ``condition`` every 50 ms until true; fail at the deadline."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{message} within {timeout_s} s"
        threading.Event().wait(0.05)


def post(server: Server, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(
        server.invocations,
        content=content,
        headers={"content-type": "application/json", **(headers or {})},
        timeout=60,
        verify=server.verify,
    )


def metric(server: Server, name: str, **labels: str) -> float:
    """The sum of a Prometheus sample over every series matching ``labels``, scraped from /metrics."""
    text = httpx.get(f"{server.url}/metrics", timeout=10, verify=server.verify).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def table_rows(settings: Settings) -> pd.DataFrame:
    return DeltaTable(settings.inference_table_uri).to_pandas()


def raw_exchange(port: int, head: bytes, body_parts: Iterable[bytes] = ()) -> bytes:
    """Send a raw request (head, then body parts) and read the answer until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(head)
        for part in body_parts:
            conn.sendall(part)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
            if b"\r\n\r\n" in answer and _complete(answer):
                break
        return answer


def _complete(answer: bytes) -> bool:
    head, _, body = answer.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":", 1)[1])
    return False
