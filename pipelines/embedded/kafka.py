"""An Apache Kafka broker (KRaft, single node) resolved from Maven Central and run on loopback.

On first use ``kafka_pom.xml`` is resolved by Maven into ``<cache_dir>/kafka-<version>/libs``;
the storage is formatted once under ``<state_dir>/kafka``; the broker is ready only when a real
admin client has listed the cluster's topics.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import subprocess
import uuid
from importlib import resources
from pathlib import Path

from lakeserve.errors import ComponentError
from lakeserve.pipelines.embedded.prereqs import require_java, require_maven
from lakeserve.pipelines.embedded.process import ManagedProcess
from lakeserve.pipelines.embedded.settings import StackSettings
from lakeserve.pipelines.kafka_settings import KafkaSettings

_LOG4J2 = """Configuration:
  Appenders:
    RollingFile:
      name: file
      fileName: "{log}"
      filePattern: "{log}.%i"
      PatternLayout: {{pattern: "[%d] %p %m (%c)%n"}}
      SizeBasedTriggeringPolicy: {{size: 20MB}}
      DefaultRolloverStrategy: {{max: 3}}
  Loggers:
    Root: {{level: INFO, AppenderRef: [{{ref: file}}]}}
"""


class KafkaBroker:
    """The embedded broker: ``start()``, ``stop()``, ``running``, ``bootstrap``."""

    def __init__(self, stack: StackSettings) -> None:
        self.stack = stack
        self.home = stack.state_dir / "kafka"
        self.process = ManagedProcess("kafka", self.home)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.stack.kafka_port}"

    @property
    def libs(self) -> Path:
        return self.stack.cache_dir / f"kafka-{self.stack.kafka_version}" / "libs"

    @property
    def running(self) -> bool:
        return self.process.pid() is not None

    def start(self, timeout_s: float = 90.0) -> None:
        """Resolve jars if needed, format storage once, start, wait until a client is served."""
        java = require_java()
        for port in (self.stack.kafka_port, self.stack.kafka_controller_port):
            if not port_is_free(port):
                raise ComponentError("kafka", f"port {port} on 127.0.0.1 is in use by another program; "
                                     "stop it or set stack.kafka_port / stack.kafka_controller_port")
        self.resolve()
        config = self._write_config()
        if not (self.home / "data" / "meta.properties").exists():
            self._format(java, config)
        self.process.start(
            [
                java,
                f"-Xmx{self.stack.kafka_heap}",
                "-XX:+UseG1GC",
                f"-Dlog4j2.configurationFile={self.home / 'log4j2.yaml'}",
                "-cp",
                f"{self.libs}/*",
                "kafka.Kafka",
                str(config),
            ]
        )
        self.process.wait_ready(self._serves_clients, timeout_s, "serving clients")

    def stop(self) -> bool:
        return self.process.stop()

    def resolve(self) -> Path:
        """Copy Kafka's jars from Maven Central into the cache (once per version)."""
        marker = self.libs / ".resolved"
        if marker.exists():
            return self.libs
        mvn = require_maven()
        pom = resources.files("lakeserve.pipelines.embedded").joinpath("kafka_pom.xml")
        with resources.as_file(pom) as pom_path:
            cmd = [
                mvn,
                "-q",
                "-B",
                "-f",
                str(pom_path),
                f"-Dkafka.version={self.stack.kafka_version}",
                "dependency:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={self.libs}",
            ]
            result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0 or not any(self.libs.glob("kafka_2.13-*.jar")):
            raise ComponentError(
                "kafka",
                f"Maven could not resolve Kafka {self.stack.kafka_version}:\n{(result.stdout + result.stderr)[-2000:]}",
            )
        marker.write_text(self.stack.kafka_version)
        return self.libs

    def _write_config(self) -> Path:
        s = self.stack
        self.home.mkdir(parents=True, exist_ok=True)
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"127.0.0.1:{s.kafka_controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{s.kafka_port},CONTROLLER://127.0.0.1:{s.kafka_controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{s.kafka_port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.home / "data"),
            "num.partitions": "4",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "8",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "group.consumer.min.session.timeout.ms": "1000",
            "group.classic.min.session.timeout.ms": "1000",
            "auto.create.topics.enable": "false",
            "log.retention.hours": "168",
        }
        config = self.home / "server.properties"
        config.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (self.home / "log4j2.yaml").write_text(_LOG4J2.format(log=self.home / "server.log"))
        return config

    def _format(self, java: str, config: Path) -> None:
        cmd = [
            java,
            "-cp",
            f"{self.libs}/*",
            "kafka.tools.StorageTool",
            "format",
            f"--cluster-id={_cluster_id()}",  # a random id may start with "-"
            "-c",
            str(config),
            "--standalone",
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise ComponentError("kafka", f"formatting storage failed: {(result.stdout + result.stderr)[-1500:]}")

    def _serves_clients(self) -> bool:
        return list_topics(KafkaSettings(bootstrap_servers=[self.bootstrap])) is not None


def port_is_free(port: int) -> bool:
    """Whether nothing listens on 127.0.0.1:``port`` (so a broker we start can bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding (22 characters)."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def list_topics(kafka: KafkaSettings, timeout_ms: int = 2000) -> set[str] | None:
    """The cluster's topics through a real admin client, or None if it does not answer."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        admin = KafkaAdminClient(
            **kafka.client_options(),
            request_timeout_ms=timeout_ms,
            bootstrap_timeout_ms=timeout_ms,
            client_id="lakeserve-probe",
        )
    except (KafkaError, OSError, ValueError):
        return None
    try:
        return set(admin.list_topics())
    except (KafkaError, OSError):
        return None
    finally:
        admin.close()


def ensure_topics(kafka: KafkaSettings, names: list[str] | None = None) -> set[str]:
    """Create the request, response and dead-letter topics if missing; returns those created."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    wanted = names or [kafka.requests_topic, kafka.responses_topic, kafka.dead_letter_topic]
    admin = KafkaAdminClient(**kafka.client_options(), client_id="lakeserve-admin")
    try:
        missing = [t for t in wanted if t not in set(admin.list_topics())]
        if missing:
            new = [NewTopic(t, num_partitions=kafka.partitions, replication_factor=1) for t in missing]
            with contextlib.suppress(TopicAlreadyExistsError):  # another worker was quicker
                admin.create_topics(new)
        return set(missing)
    except KafkaError as exc:
        raise ComponentError("kafka", f"cannot create topics {wanted}: {exc}") from exc
    finally:
        admin.close()
