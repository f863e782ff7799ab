"""Settings that work on one host only: what a deployment over many hosts (docs/deploy.md) must
change. Each finding names the setting and says what the hosts need instead; the defaults run
everything on one host (the embedded stack), so they are findings, not errors."""

from __future__ import annotations

from lakeserve.pipelines.http_settings import is_loopback
from lakeserve.settings import Settings


def one_host_findings(settings: Settings) -> list[str]:
    """One line per setting that only this host can use, for settings loaded on many hosts."""
    findings = [
        f"kafka.bootstrap_servers: {server} is a loopback address; every host needs the Kafka cluster's "
        "bootstrap addresses"
        for server in settings.kafka.bootstrap_servers
        if is_loopback(server.rsplit(":", 1)[0].strip("[]"))
    ]
    mlflow = settings.mlflow
    for name, uri in (("tracking_uri", mlflow.tracking_uri), ("registry_uri", mlflow.registry_uri)):
        if uri is not None and _local(uri) and not (name == "registry_uri" and uri == mlflow.tracking_uri):
            findings.append(
                f"mlflow.{name}: {uri} is a file on this host; every host needs one MLflow tracking server "
                "(http://...) or a database they share (postgresql://...)"
            )
    if mlflow.artifact_root is not None and _local(mlflow.artifact_root):
        findings.append(
            f"mlflow.artifact_root: {mlflow.artifact_root} is a folder on this host; models logged there load "
            "nowhere else: log them to object storage or through an MLflow server that serves artifacts"
        )
    if settings.tables.root is not None and _local(settings.tables.root):
        findings.append(
            f"tables.root: {settings.tables.root} is a folder on this host; each host would write its own "
            "inference table: use object storage (s3://, gs://, az://, abfss://) or a volume every host mounts there"
        )
    findings += _feast_findings(settings)
    return findings


def _feast_findings(settings: Settings) -> list[str]:
    feast, state = settings.feast, settings.stack.state_dir
    findings = []
    if feast.online_store == "sqlite":
        findings.append(
            "feast.online_store: sqlite is a file in feast.repo_path; every host needs one Redis "
            "(online_store: redis, feast.redis_connection_string)"
        )
    if feast.repo_path is not None and feast.repo_path.is_relative_to(state):
        findings.append(
            f"feast.repo_path: {feast.repo_path} is in stack.state_dir, which starts empty on a new host; the Feast "
            "registry (registry.db) must be there: put the repository in the image or on a volume, and point "
            "feast.repo_path at it"
        )
    return findings


def _local(location: str) -> bool:
    """A path, a ``file:`` URI or a SQLite database: only this host reads it (``databricks`` is
    MLflow's name for a Databricks workspace, not a path)."""
    if location.startswith(("file:", "sqlite:")):
        return True
    return "://" not in location and not location.startswith("databricks")

