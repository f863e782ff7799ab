"""Tables on object storage, offline: which locations are accepted, how ``tables.storage_options``
reach delta-rs, Spark's connectors and MLflow's boto3, and that they are never printed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lakeserve.errors import ConfigError
from lakeserve.jobs.spark_storage import AWS_SDK_VERSION, connector_packages, hadoop_settings, hadoop_version
from lakeserve.monitoring.settings import TablesSettings
from lakeserve.pipelines.settings import write_settings
from lakeserve.redact import MASK, redact
from lakeserve.settings import artifact_store_env, load_settings

STORE = {
    "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
    "AWS_ACCESS_KEY_ID": "lake-key",
    "AWS_SECRET_ACCESS_KEY": "lake-secret",
    "AWS_REGION": "us-east-1",
    "AWS_ALLOW_HTTP": "true",
    "aws_conditional_put": "etag",
}


def test_a_location_neither_writer_reads_is_refused_naming_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(overrides={"stack": {"state_dir": str(tmp_path)}, "tables": {"root": "hdfs://nn/tables"}})
    assert "tables.root" in str(caught.value)
    assert "s3://" in str(caught.value)  # and says what is accepted


@pytest.mark.parametrize("root", ["/data/tables", "file:///data/tables", "s3://lake/t", "s3a://lake/t",
                                  "gs://lake/t", "abfss://c@acct.dfs.core.windows.net/t"])  # fmt: skip
def test_the_locations_both_writers_read_are_accepted(root: str) -> None:
    assert TablesSettings(root=root).root == root


def test_the_options_reach_delta_rs_revealed_and_are_masked_everywhere_else(tmp_path: Path) -> None:
    settings = load_settings(
        overrides={"stack": {"state_dir": str(tmp_path)}, "tables": {"root": "s3://lake/t", "storage_options": STORE}}
    )
    assert settings.tables.delta_storage_options() == STORE
    assert "lake-secret" not in repr(settings.tables)
    shown = redact(settings.model_dump(mode="json"))["tables"]["storage_options"]
    assert set(shown.values()) == {MASK}
    # the file a subprocess loads (notebooks, spark-submit) holds them in clear, and loads back equal
    again = load_settings(write_settings(settings, tmp_path / "sub" / "lakeserve.yaml"))
    assert again.tables.delta_storage_options() == STORE


def test_no_options_means_none_for_delta_rs() -> None:
    assert TablesSettings(root="/t").delta_storage_options() is None


def test_s3_options_become_s3a_settings_of_that_bucket_only() -> None:
    conf = hadoop_settings(TablesSettings(root="s3://lake/tables", storage_options=STORE))
    bucket = "fs.s3a.bucket.lake."
    assert conf[bucket + "endpoint"] == "http://127.0.0.1:9000"
    assert conf[bucket + "access.key"] == "lake-key"
    assert conf[bucket + "secret.key"] == "lake-secret"
    assert conf[bucket + "endpoint.region"] == "us-east-1"
    assert conf[bucket + "connection.ssl.enabled"] == "false"
    assert conf[bucket + "path.style.access"] == "true"  # delta-rs's default addressing
    assert conf[bucket + "aws.credentials.provider"].endswith("SimpleAWSCredentialsProvider")
    assert conf["fs.s3.impl"] == "org.apache.hadoop.fs.s3a.S3AFileSystem"  # s3:// read through S3A
    assert not [k for k in conf if "conditional" in k]  # delta-rs's own option has no Spark side
    assert all(k.startswith(bucket) for k in conf if k.startswith("fs.s3a."))


def test_session_tokens_and_virtual_hosts_map_too() -> None:
    options = {"aws_access_key_id": "k", "aws_secret_access_key": "s", "aws_session_token": "t",
               "AWS_VIRTUAL_HOSTED_STYLE_REQUEST": "true"}  # fmt: skip
    conf = hadoop_settings(TablesSettings(root="s3a://lake/x", storage_options=options))
    assert conf["fs.s3a.bucket.lake.session.token"] == "t"  # option names are case-insensitive, as in delta-rs
    assert conf["fs.s3a.bucket.lake.aws.credentials.provider"].endswith("TemporaryAWSCredentialsProvider")
    assert conf["fs.s3a.bucket.lake.path.style.access"] == "false"


def test_azure_and_gcs_keys_map_to_their_connectors() -> None:
    azure = hadoop_settings(TablesSettings(root="abfss://c@acct.dfs.core.windows.net/t",
                                           storage_options={"AZURE_STORAGE_ACCOUNT_KEY": "az-key"}))  # fmt: skip
    assert azure == {"fs.azure.account.key.acct.dfs.core.windows.net": "az-key"}
    gcs = hadoop_settings(TablesSettings(root="gs://b/t", storage_options={"GOOGLE_SERVICE_ACCOUNT": "/k.json"}))
    assert gcs["fs.gs.auth.service.account.json.keyfile"] == "/k.json"
    assert hadoop_settings(TablesSettings(root="/local/t", storage_options=STORE)) == {}


def test_connectors_match_the_hadoop_pyspark_ships() -> None:
    version = hadoop_version()
    packages = connector_packages({"s3"})
    assert f"org.apache.hadoop:hadoop-aws:{version}" in packages
    assert f"software.amazon.awssdk:s3:{AWS_SDK_VERSION}" in packages
    assert not [p for p in packages if p.endswith(":bundle")]  # never the 640 MB bundle
    assert connector_packages({"local"}) == []
    assert f"org.apache.hadoop:hadoop-azure:{version}" in connector_packages({"abfss"})


def test_mlflow_reaches_artifacts_on_the_tables_store(tmp_path: Path) -> None:
    base = {"stack": {"state_dir": str(tmp_path)}, "tables": {"root": "s3://lake/t", "storage_options": STORE}}
    on_store = load_settings(overrides={**base, "mlflow": {"artifact_root": "s3://lake/mlartifacts"}})
    assert artifact_store_env(on_store) == {
        "MLFLOW_S3_ENDPOINT_URL": "http://127.0.0.1:9000",
        "AWS_ACCESS_KEY_ID": "lake-key",
        "AWS_SECRET_ACCESS_KEY": "lake-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    assert artifact_store_env(load_settings(overrides=base)) == {}  # artifacts on local disk: nothing
    json.dumps(artifact_store_env(on_store))  # plain strings, ready for os.environ
