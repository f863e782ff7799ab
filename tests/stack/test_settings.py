"""The settings tree: YAML, environment overrides, and one clear message per broken rule."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lakeserve.errors import ConfigError
from lakeserve.settings import load_settings

ALIASED = {"name": "champion", "entity_name": "m", "alias": "a"}


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "lakeserve.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_defaults_resolve_into_the_state_folder(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, {"stack": {"state_dir": str(tmp_path / "st")}}))
    assert s.mlflow.tracking_uri == f"sqlite:///{tmp_path / 'st' / 'mlflow.db'}"
    assert s.mlflow.registry_uri == s.mlflow.tracking_uri
    assert s.feast.repo_path == tmp_path / "st" / "feast"
    assert s.inference_table_uri == f"{tmp_path / 'st' / 'tables'}/main/inference_logs/lakeserve_payload"
    assert [r.traffic_percentage for r in s.endpoint.traffic_config.routes] == [80, 20]


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, {"kafka": {"group_id": "from-file", "requests_topic": "req"}})
    monkeypatch.setenv("LAKESERVE_KAFKA__GROUP_ID", "from-env")
    monkeypatch.setenv("LAKESERVE_SPARK__MASTER", "spark://cluster:7077")
    s = load_settings(path)
    assert s.kafka.group_id == "from-env"
    assert s.kafka.requests_topic == "req"  # the file's other values survive a partial override
    assert s.spark.master == "spark://cluster:7077"


def test_databricks_shaped_endpoint(tmp_path: Path) -> None:
    endpoint = {
        "name": "fraud-detection",
        "served_entities": [
            {"name": "model-v2", "entity_name": "fraud_detector", "entity_version": "2", "workload_type": "CPU",
             "workload_size": "Small", "scale_to_zero_enabled": False},  # Databricks' defaults load
            {"name": "model-v3", "entity_name": "fraud_detector", "alias": "challenger", "workload_type": "GPU_SMALL"},
        ],
        "traffic_config": {
            "routes": [
                {"served_model_name": "model-v2", "traffic_percentage": 90},
                {"served_model_name": "model-v3", "traffic_percentage": 10},
            ]
        },
        "auto_capture_config": {
            "catalog_name": "ml_prod",
            "schema_name": "inference_logs",
            "table_name_prefix": "fraud_detection",
        },
    }
    s = load_settings(write(tmp_path, {"endpoint": endpoint, "stack": {"state_dir": str(tmp_path)}}))
    assert s.endpoint.entity("model-v2").model_uri == "models:/fraud_detector/2"
    assert s.endpoint.entity("model-v3").model_uri == "models:/fraud_detector@challenger"
    assert s.endpoint.entity("model-v3").on_gpu
    assert s.inference_table_uri.endswith("/ml_prod/inference_logs/fraud_detection_payload")


@pytest.mark.parametrize(
    ("data", "field", "rule"),
    [
        (
            {
                "endpoint": {
                    "traffic_config": {
                        "routes": [
                            {"served_model_name": "champion", "traffic_percentage": 70},
                            {"served_model_name": "challenger", "traffic_percentage": 20},
                        ]
                    }
                }
            },
            "endpoint.traffic_config",
            "must sum to 100, got 90",
        ),
        (
            {"endpoint": {"traffic_config": {"routes": [{"served_model_name": "ghost", "traffic_percentage": 100}]}}},
            "endpoint",
            "unknown served entity 'ghost'",
        ),
        (
            {"endpoint": {"served_entities": [{"name": "a", "entity_name": "m"}]}},
            "endpoint.served_entities.0",
            "exactly one of entity_version or alias",
        ),
        (
            {"endpoint": {"served_entities": [{**ALIASED, "scale_to_zero_enabled": True}]}},
            "endpoint.served_entities.0.scale_to_zero_enabled",
            "not supported by lakeserve (workers keep every served entity loaded and never scale to zero)",
        ),
        (
            {"endpoint": {"served_entities": [{**ALIASED, "workload_size": "Large"}]}},
            "endpoint.served_entities.0.workload_size",
            "not supported by lakeserve ('Large'): concurrency is the number of workers",
        ),
        ({"kafka": {"partitions": 0}}, "kafka.partitions", "greater than or equal to 1"),
        (
            {"kafka": {"passthrough_headers": ["correlation-id", "status"]}},
            "kafka.passthrough_headers",
            "'status' is a header lakeserve writes itself and cannot be passed through",
        ),
        ({"kafka": {"security_protocol": "SASL_SSL"}}, "kafka", "needs sasl_mechanism"),
        (
            {"kafka": {"security_protocol": "SASL_SSL", "sasl_mechanism": "OAUTHBEARER"}},
            "kafka.sasl_mechanism",
            "OAUTHBEARER is not supported: lakeserve has no token provider",
        ),
        (
            {"kafka": {"max_message_bytes": 8 * 1024 * 1024}},  # under the default 16 MiB request cap
            "(root)",
            "kafka.max_message_bytes (8388608) must be at least the larger of endpoint.limits.max_request_bytes",
        ),
        (
            {
                "kafka": {"max_message_bytes": 2 * 1024 * 1024},
                "endpoint": {"limits": {"max_request_bytes": 1024 * 1024, "max_response_bytes": 4 * 1024 * 1024}},
            },
            "(root)",
            "max_response_bytes (4194304) plus 65536 bytes",
        ),
        ({"stack": {"kafka_ssl_port": 9092}}, "stack", "the Kafka ports must differ (kafka_port=9092"),
        ({"stack": {"kafka_sasl_ssl_port": 9095}}, "stack", "a SASL_SSL listener needs users"),
        (
            {"stack": {"kafka_sasl_ssl_port": 9095, "kafka_scram_users": {"alice": "a,b"}}},
            "stack.kafka_scram_users",
            "the password of 'alice' must be non-empty, printable, without",
        ),
        ({"feast": {"online_store": "dynamo"}}, "feast.online_store", "'sqlite' or 'redis'"),
        ({"tables": {"flush_rows": 0, "bogus": 1}}, "tables.bogus", "Extra inputs are not permitted"),
    ],
)
def test_bad_config_names_field_and_rule(tmp_path: Path, data: dict[str, object], field: str, rule: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, data))
    message = str(err.value)
    line = next((x for x in message.splitlines() if x.strip().startswith(field + ":")), None)
    assert line is not None, message
    assert rule in line, message


def test_unreadable_or_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read settings file"):
        load_settings(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("kafka: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(bad)


def test_cli_reports_bad_config_in_one_message(tmp_path: Path) -> None:
    path = write(tmp_path, {"endpoint": {"limits": {"timeout_s": -1}}})
    done = subprocess.run(
        [sys.executable, "-m", "lakeserve.cli", "--config", str(path), "config", "show"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "endpoint.limits.timeout_s: Input should be greater than 0" in done.stderr
    assert "Traceback" not in done.stderr


def test_secrets_are_masked_when_shown(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "kafka": {
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "PLAIN",
                "sasl_username": "svc",
                "sasl_password": "hunter2",
            }
        },
    )
    s = load_settings(path)
    assert "hunter2" not in s.model_dump_json()
    assert s.kafka.client_options()["sasl_plain_password"] == "hunter2"


def test_written_settings_load_back_equal(tmp_path: Path) -> None:
    from lakeserve.pipelines.settings import write_settings

    original = load_settings(write(tmp_path, {
        "stack": {"state_dir": str(tmp_path / "st")},
        "feast": {"online_store": "redis", "redis_connection_string": "127.0.0.1:7777,password=s3cret"},
        "kafka": {"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_username": "u",
                  "sasl_password": "hunter2"},
    }))
    path = write_settings(original, tmp_path / "out" / "settings.yaml")
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    again = load_settings(path)
    assert again == original
    assert again.feast.redis_connection_string.get_secret_value() == "127.0.0.1:7777,password=s3cret"
