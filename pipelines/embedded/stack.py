"""The embedded stack: the components ``lakeserve up`` starts and ``lakeserve down`` stops.

Kafka (with the endpoint's topics; its status line names the TLS listeners and the CA file that
their clients trust, ``kafka.ssl_cafile``), the MLflow UI over the SQLite store when ``mlflow.ui_port``
is set, and Redis when the Feast online store is Redis. MLflow tracking itself, Feast's SQLite
store and Spark need no process: clients open them directly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from lakeserve.pipelines.embedded.kafka import KafkaBroker, ensure_topics
from lakeserve.pipelines.embedded.process import ManagedProcess
from lakeserve.pipelines.embedded.services import MlflowUi, RedisServer
from lakeserve.pipelines.settings import ServiceSettings

log = logging.getLogger(__name__)


class Component(Protocol):
    process: ManagedProcess

    def start(self) -> None: ...
    def stop(self) -> bool: ...


@dataclass(frozen=True)
class StackStatus:
    name: str
    pid: int | None
    address: str


class Stack:
    """Starts the components in order and stops them in reverse order."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.kafka = KafkaBroker(settings.stack, settings.kafka.max_message_bytes)
        self.mlflow_ui = MlflowUi(settings.mlflow, settings.stack.state_dir) if settings.mlflow.ui_port else None
        self.redis = (
            RedisServer(settings.stack.redis_port, settings.stack.state_dir)
            if settings.feast.online_store == "redis"
            else None
        )

    def components(self) -> list[tuple[str, Component, str]]:
        out: list[tuple[str, Component, str]] = [("kafka", self.kafka, _kafka_address(self.kafka))]
        if self.redis is not None:
            out.append(("redis", self.redis, f"127.0.0.1:{self.redis.port}"))
        if self.mlflow_ui is not None:
            out.append(("mlflow-ui", self.mlflow_ui, self.mlflow_ui.url))
        return out

    def up(self) -> list[str]:
        """Start what is not running yet; returns the names started. Topics are ensured."""
        started = []
        for name, component, address in self.components():
            if component.process.pid() is None:
                log.info("starting %s on %s", name, address)
                component.start()
                started.append(name)
        ensure_topics(self.settings.kafka)
        return started

    def down(self) -> list[str]:
        """Stop everything this state folder runs, in reverse order; returns the names stopped."""
        return [name for name, component, _ in reversed(self.components()) if component.stop()]

    def status(self) -> list[StackStatus]:
        return [StackStatus(name, c.process.pid(), address) for name, c, address in self.components()]


def _kafka_address(broker: KafkaBroker) -> str:
    """``127.0.0.1:9092``, then the TLS listeners and the CA file their clients trust, if any."""
    extra = [f"{name} {address}" for name, address in broker.listeners.items() if name != "PLAINTEXT"]
    if broker.tls is None:
        return broker.bootstrap
    return f"{broker.bootstrap} ({', '.join(extra)}; CA {broker.tls.ca_file})"
