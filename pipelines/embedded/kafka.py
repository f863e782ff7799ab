"""An Apache Kafka broker (KRaft, single node) resolved from Maven Central and run on loopback.

On first use ``kafka_pom.xml`` is resolved by Maven into ``<cache_dir>/kafka-<version>/libs``;
the storage is formatted once under ``<state_dir>/kafka``; the broker is ready only when a real
admin client has listed the cluster's topics.

PLAINTEXT on ``stack.kafka_port`` carries the controller's and the broker's own traffic and is
always there. ``stack.kafka_ssl_port`` adds a TLS listener and ``stack.kafka_sasl_ssl_port`` a
TLS listener with SCRAM-SHA-512 logins, both with the certificates of
:mod:`~lakeserve.pipelines.embedded.tls` (read as PEM stores). The SCRAM users are written into
the metadata when the storage is formatted; a later change of ``stack.kafka_scram_users`` is
refused with the fix (a fresh storage), never ignored. The broker accepts messages up to
``kafka.max_message_bytes`` (``message.max.bytes``), and the topics lakeserve creates say so too.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import socket
import subprocess
import uuid
from importlib import resources
from pathlib import Path

from lakeserve.errors import ComponentError
from lakeserve.pipelines.embedded.prereqs import require_java, require_maven
from lakeserve.pipelines.embedded.process import ManagedProcess
from lakeserve.pipelines.embedded.settings import StackSettings
from lakeserve.pipelines.embedded.tls import BrokerTls, ensure_broker_tls
from lakeserve.pipelines.kafka_errors import check_login
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
    """The embedded broker: ``start()``, ``stop()``, ``running``, ``bootstrap``, ``listeners``."""

    def __init__(self, stack: StackSettings, max_message_bytes: int = KafkaSettings().max_message_bytes) -> None:
        self.stack = stack
        self.max_message_bytes = max_message_bytes
        self.home = stack.state_dir / "kafka"
        self.process = ManagedProcess("kafka", self.home)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.stack.kafka_port}"

    @property
    def listeners(self) -> dict[str, str]:
        """Security protocol → ``host:port`` of every client listener (PLAINTEXT first)."""
        ports = {"PLAINTEXT": self.stack.kafka_port, "SSL": self.stack.kafka_ssl_port,
                 "SASL_SSL": self.stack.kafka_sasl_ssl_port}  # fmt: skip
        return {name: f"127.0.0.1:{port}" for name, port in ports.items() if port is not None}

    @property
    def tls(self) -> BrokerTls | None:
        """Where the CA clients trust and the broker's key and chain lie, when a TLS listener is on."""
        if self.stack.kafka_ssl_port is None and self.stack.kafka_sasl_ssl_port is None:
            return None
        return BrokerTls(self.home / "tls" / "ca.pem", self.home / "tls" / "broker.pem")

    @property
    def libs(self) -> Path:
        return self.stack.cache_dir / f"kafka-{self.stack.kafka_version}" / "libs"

    @property
    def running(self) -> bool:
        return self.process.pid() is not None

    def start(self, timeout_s: float = 90.0) -> None:
        """Resolve jars if needed, format storage once, start, wait until a client is served."""
        java = require_java()
        s = self.stack
        for port in (s.kafka_port, s.kafka_controller_port, s.kafka_ssl_port, s.kafka_sasl_ssl_port):
            if port is not None and not port_is_free(port):
                raise ComponentError("kafka", f"port {port} on 127.0.0.1 is in use by another program; stop it "
                                     "or set stack.kafka_port / kafka_controller_port / kafka_ssl_port / "
                                     "kafka_sasl_ssl_port")  # fmt: skip
        self.resolve()
        if self.tls is not None:
            ensure_broker_tls(self.tls.ca_file.parent)
        config = self._write_config()
        if not (self.home / "data" / "meta.properties").exists():
            self._format(java, config)
        self._check_scram_users()
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
            "listeners": ",".join([*self._advertised(), f"CONTROLLER://127.0.0.1:{s.kafka_controller_port}"]),
            "advertised.listeners": ",".join(self._advertised()),
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": ",".join(["CONTROLLER:PLAINTEXT", *(f"{n}:{n}" for n in self.listeners)]),
            "inter.broker.listener.name": "PLAINTEXT",
            "message.max.bytes": str(self.max_message_bytes),
            "replica.fetch.max.bytes": str(self.max_message_bytes),
            **self._security(),
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

    def _advertised(self) -> list[str]:
        return [f"{name}://{address}" for name, address in self.listeners.items()]

    def _security(self) -> dict[str, str]:
        """PEM key and trust stores for the TLS listeners; SCRAM-SHA-512 on the SASL_SSL one."""
        props: dict[str, str] = {}
        if self.tls is not None:
            props |= {
                "ssl.keystore.type": "PEM",
                "ssl.keystore.location": str(self.tls.keystore_file),
                "ssl.truststore.type": "PEM",
                "ssl.truststore.location": str(self.tls.ca_file),
                "ssl.client.auth": "none",
            }
        if self.stack.kafka_sasl_ssl_port is not None:
            props |= {
                "sasl.enabled.mechanisms": "SCRAM-SHA-512",
                "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config":
                    "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            }  # fmt: skip
        return props

    @property
    def _scram_marker(self) -> Path:
        """A digest of the users the storage was formatted with (never the passwords themselves)."""
        return self.home / "scram-users.sha256"

    def _scram_digest(self) -> str:
        users = sorted((name, pw.get_secret_value()) for name, pw in self.stack.kafka_scram_users.items())
        return hashlib.sha256(repr(users).encode()).hexdigest()

    def _check_scram_users(self) -> None:
        marker = self._scram_marker
        formatted = marker.read_text().strip() if marker.exists() else hashlib.sha256(b"[]").hexdigest()
        if formatted != self._scram_digest():
            raise ComponentError(
                "kafka",
                "stack.kafka_scram_users differ from the users the storage was formatted with; SCRAM users are "
                f"set only when the storage is formatted: `lakeserve down`, then remove {self.home / 'data'}",
            )

    def _format(self, java: str, config: Path) -> None:
        scram = [
            f'--add-scram=SCRAM-SHA-512=[name={name},password="{pw.get_secret_value()}"]'
            for name, pw in self.stack.kafka_scram_users.items()
        ]
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
            *scram,
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            out = result.stdout + result.stderr
            for pw in self.stack.kafka_scram_users.values():
                out = out.replace(pw.get_secret_value(), "**********")
            raise ComponentError("kafka", f"formatting storage failed: {out[-1500:]}")
        self._scram_marker.write_text(self._scram_digest())

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
    """Create the request, response and dead-letter topics if missing (each taking messages up to
    ``kafka.max_message_bytes``); returns those created."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    wanted = names or [kafka.requests_topic, kafka.responses_topic, kafka.dead_letter_topic]
    check_login(kafka)
    admin = KafkaAdminClient(**kafka.client_options(), client_id="lakeserve-admin")
    try:
        missing = [t for t in wanted if t not in set(admin.list_topics())]
        if missing:
            configs = {"max.message.bytes": str(kafka.max_message_bytes)}
            new = [NewTopic(t, kafka.partitions, 1, topic_configs=configs) for t in missing]
            with contextlib.suppress(TopicAlreadyExistsError):  # another worker was quicker
                admin.create_topics(new)
        return set(missing)
    except KafkaError as exc:
        raise ComponentError("kafka", f"cannot create topics {wanted}: {exc}") from exc
    finally:
        admin.close()
