"""Settings for a deployment over many hosts, with a secret in every place one can be: offline,
nothing is started (the renderer only reads the settings and the files they name)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from lakeserve.settings import Settings, load_settings

# every secret value of many_hosts_config, and the key file's content: none may leave the Secret
SECRETS = ("scram-pw", "sasl-pw", "pg-pass", "redis-pw", "s3-secret", "spark-s3-secret", "batch-secret",
           "s3-option-secret", "client-key-material", "server-key-material")  # fmt: skip


def many_hosts_config(folder: Path) -> dict[str, Any]:
    """A settings tree for a cluster: brokers over SASL_SSL with client certificates, MLflow on a
    database, tables on object storage, Redis for Feast, a Spark master, TLS for REST."""
    tls = folder / "tls"
    tls.mkdir(parents=True, exist_ok=True)
    files = {}
    for name in ("ca.pem", "client.pem", "client.key", "server.pem", "server.key"):
        material = name.replace(".", "-") + "-material"
        (tls / name).write_text(f"-----BEGIN TEST-----\n{material}\n-----END TEST-----\n")
        files[name] = str(tls / name)
    return {
        "stack": {"state_dir": str(folder / "state"), "kafka_sasl_ssl_port": 9095,
                  "kafka_scram_users": {"Scorer": "scram-pw"}},
        "kafka": {"bootstrap_servers": ["kafka-0.kafka:9093", "kafka-1.kafka:9093"], "partitions": 6,
                  "group_id": "scorers", "requests_topic": "fraud.requests", "stop_timeout_ms": 8000,
                  "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_username": "scorer",
                  "sasl_password": "sasl-pw", "ssl_cafile": files["ca.pem"], "ssl_certfile": files["client.pem"],
                  "ssl_keyfile": files["client.key"]},
        "mlflow": {"tracking_uri": "postgresql://mlflow:pg-pass@db.internal:5432/mlflow",
                   "artifact_root": "s3://models/artifacts"},
        "feast": {"online_store": "redis", "redis_connection_string": "redis.internal:6379,password=redis-pw",
                  "repo_path": "/opt/feature-repo"},
        "tables": {"root": "s3://AKIA:s3-secret@bucket/tables",
                   "storage_options": {"AWS_ENDPOINT_URL": "https://s3.internal", "AWS_REGION": "eu-west-1",
                                       "AWS_ACCESS_KEY_ID": "AKIA", "AWS_SECRET_ACCESS_KEY": "s3-option-secret"}},
        "endpoint": {"limits": {"timeout_s": 20}},
        "http": {"allow_cidrs": ["10.0.0.0/8"], "ssl_certfile": files["server.pem"],
                 "ssl_keyfile": files["server.key"]},
        "spark": {"master": "spark://spark-master:7077",
                  "conf": {"spark.hadoop.fs.s3a.secret.key": "spark-s3-secret", "spark.sql.ansi.enabled": "true"}},
        "schedule": {"jobs": [{"job": "monitor", "cron": "*/15 * * * *"},
                              {"job": "batch-score", "cron": "0 * * * *",
                               "batch": {"input": "s3://key:batch-secret@bucket/in", "output": "s3://bucket/out"}}]},
    }  # fmt: skip


@pytest.fixture(autouse=True)
def no_lakeserve_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The settings come from the file alone (the shell running the tests may set LAKESERVE_...)."""
    for name in list(os.environ):
        if name.upper().startswith("LAKESERVE_"):
            monkeypatch.delenv(name)


@pytest.fixture
def secret_values() -> tuple[str, ...]:
    return SECRETS


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "lakeserve.yaml"
    path.write_text(yaml.safe_dump(many_hosts_config(tmp_path)))
    return path


@pytest.fixture
def settings(config_file: Path) -> Settings:
    return load_settings(config_file)
