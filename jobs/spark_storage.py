"""``tables.storage_options`` as Spark reads them: the Hadoop connector jars of a table's scheme,
resolved from Maven Central like the Delta jars, and the delta-rs option names mapped onto the
connector's settings, scoped to the one bucket (or storage account) of ``tables.root``.

The service reads the options as delta-rs takes them (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
...); the jobs read the same table through S3A, GCS's connector or ABFS. One list of options
serves both, so a table root moves to an object store by one setting. Options delta-rs alone
knows (``aws_conditional_put``, its locking provider) have no Spark side and are left out: Spark
writes only the jobs' own tables, one job run at a time, never the inference table.
"""

from __future__ import annotations

import re
from importlib import resources

from lakeserve.monitoring.settings import TablesSettings
from lakeserve.monitoring.table_storage import Scheme, bucket_of, table_scheme

AWS_SDK_VERSION = "2.35.4"  # what hadoop-aws 3.5.0 is built against (hadoop-project's aws-java-sdk-v2.version)
GCS_CONNECTOR = "com.google.cloud.bigdataoss:gcs-connector:4.0.4"
S3A = "org.apache.hadoop.fs.s3a.S3AFileSystem"

# S3A needs the SDK's S3 client, not its 640 MB bundle of every AWS service: the bundle is
# excluded and the modules S3A loads are named (STS for assumed-role and session credentials).
_AWS_MODULES = ("s3", "s3-transfer-manager", "sts")
EXCLUDED_PACKAGES = ("software.amazon.awssdk:bundle",)


def hadoop_version() -> str:
    """The Hadoop client pyspark ships (``hadoop-client-api-<version>.jar``): connectors must match it."""
    names = [entry.name for entry in resources.files("pyspark").joinpath("jars").iterdir()]
    for name in names:
        match = re.fullmatch(r"hadoop-client-api-(\d+\.\d+\.\d+)\.jar", name)
        if match:
            return match.group(1)
    raise RuntimeError("pyspark ships no hadoop-client-api jar: cannot match the object-store connectors to it")


def connector_packages(schemes: set[Scheme]) -> list[str]:
    """Maven coordinates of the connectors for ``schemes`` (none for local paths)."""
    hadoop = hadoop_version() if schemes - {"local"} else ""
    packages: list[str] = []
    if "s3" in schemes:
        packages.append(f"org.apache.hadoop:hadoop-aws:{hadoop}")
        packages += [f"software.amazon.awssdk:{module}:{AWS_SDK_VERSION}" for module in _AWS_MODULES]
    if "abfss" in schemes:
        packages.append(f"org.apache.hadoop:hadoop-azure:{hadoop}")
    if "gs" in schemes:
        packages.append(GCS_CONNECTOR)
    return packages


def storage_schemes(tables: TablesSettings) -> set[Scheme]:
    return {table_scheme(tables.root)} if tables.root else set()


def hadoop_settings(tables: TablesSettings) -> dict[str, str]:
    """Hadoop settings that let Spark read and write ``tables.root`` with ``tables.storage_options``."""
    if not tables.root:
        return {}
    scheme = table_scheme(tables.root)
    options = {k.upper(): v.get_secret_value() for k, v in tables.storage_options.items()}
    if scheme == "s3":
        return _s3a(bucket_of(tables.root), options)
    if scheme == "abfss":
        return _abfs(bucket_of(tables.root), options)
    if scheme == "gs":
        return _gcs(options)
    return {}


def _s3a(bucket: str, options: dict[str, str]) -> dict[str, str]:
    """S3A's per-bucket settings (``fs.s3a.bucket.<bucket>.*``), and ``s3://`` read through S3A."""
    prefix = f"fs.s3a.bucket.{bucket}."
    conf = {"fs.s3.impl": S3A, "fs.AbstractFileSystem.s3.impl": "org.apache.hadoop.fs.s3a.S3A"}
    plain = {
        "AWS_ACCESS_KEY_ID": "access.key",
        "AWS_SECRET_ACCESS_KEY": "secret.key",
        "AWS_SESSION_TOKEN": "session.token",
        "AWS_ENDPOINT_URL": "endpoint",
        "AWS_ENDPOINT": "endpoint",
        "AWS_REGION": "endpoint.region",
        "AWS_DEFAULT_REGION": "endpoint.region",
    }
    for option, key in plain.items():
        if option in options:
            conf.setdefault(prefix + key, options[option])
    if "AWS_SESSION_TOKEN" in options:
        conf[prefix + "aws.credentials.provider"] = "org.apache.hadoop.fs.s3a.TemporaryAWSCredentialsProvider"
    elif "AWS_ACCESS_KEY_ID" in options:
        conf[prefix + "aws.credentials.provider"] = "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider"
    if _true(options.get("AWS_ALLOW_HTTP")):
        conf[prefix + "connection.ssl.enabled"] = "false"
    # delta-rs addresses a bucket by path unless told otherwise; S3A by virtual host
    conf[prefix + "path.style.access"] = str(not _true(options.get("AWS_VIRTUAL_HOSTED_STYLE_REQUEST"))).lower()
    return conf


def _abfs(host: str, options: dict[str, str]) -> dict[str, str]:
    account = options.get("AZURE_STORAGE_ACCOUNT_NAME") or host.split("@", 1)[-1].split(".", 1)[0]
    key = options.get("AZURE_STORAGE_ACCOUNT_KEY") or options.get("AZURE_STORAGE_ACCESS_KEY")
    return {f"fs.azure.account.key.{account}.dfs.core.windows.net": key} if key else {}


def _gcs(options: dict[str, str]) -> dict[str, str]:
    keyfile = options.get("GOOGLE_SERVICE_ACCOUNT") or options.get("GOOGLE_SERVICE_ACCOUNT_PATH")
    if not keyfile:
        return {}
    return {"fs.gs.auth.type": "SERVICE_ACCOUNT_JSON_KEYFILE", "fs.gs.auth.service.account.json.keyfile": keyfile}


def _true(value: str | None) -> bool:
    return value is not None and value.strip().lower() in {"1", "true", "yes", "on"}
