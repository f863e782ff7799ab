"""Secrets are masked wherever settings or locations are printed: ``lakeserve config show``, the
demo report, the batch job's log lines."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import SecretStr

from lakeserve.jobs.end_to_end import MainReport, format_main_report
from lakeserve.redact import MASK, RedactingFilter, redact, redact_text, redact_uri

SECRETS = ("hunter2", "s3cr3tKey", "pg-pass", "sasl-pw", "AKIA-SECRET", "sigvalue")


@pytest.mark.parametrize(
    ("uri", "masked"),
    [
        ("redis://:hunter2@cache:6379/0", f"redis://:{MASK}@cache:6379/0"),
        ("postgresql://mlflow:pg-pass@db.internal:5432/mlflow", f"postgresql://mlflow:{MASK}@db.internal:5432/mlflow"),
        ("s3://AKIA:s3cr3tKey@bucket/tables", f"s3://AKIA:{MASK}@bucket/tables"),
        ("postgresql://u:pg/pass@db/x", f"postgresql://u:{MASK}@db/x"),  # an unescaped / in the password
        ("postgresql://db/mlflow?user=u&password=pg-pass&sslmode=require",
         f"postgresql://db/mlflow?user=u&password={MASK}&sslmode=require"),
        ("https://acct.blob.core.windows.net/c?sv=2022&sig=sigvalue", f"https://acct.blob.core.windows.net/c?sv=2022&sig={MASK}"),
        ("cache:6379,password=hunter2,ssl=true", f"cache:6379,password={MASK},ssl=true"),
        ("sqlite:////tmp/state/mlflow.db", "sqlite:////tmp/state/mlflow.db"),
        ("http://user@host:5000/", "http://user@host:5000/"),
        ("/tmp/state/tables/main/default/t", "/tmp/state/tables/main/default/t"),
    ],
)  # fmt: skip
def test_redact_uri_masks_credentials_and_nothing_else(uri: str, masked: str) -> None:
    assert redact_uri(uri) == masked


def test_redact_walks_a_settings_tree() -> None:
    tree = {
        "kafka": {"sasl_password": SecretStr("sasl-pw"), "bootstrap_servers": ["b:9092"]},
        "feast": {"redis_connection_string": "**********"},
        "tables": {"root": "s3://AKIA:s3cr3tKey@bucket", "storage_options": {"AWS_SECRET_ACCESS_KEY": "AKIA-SECRET"}},
        "mlflow": {"tracking_uri": "postgresql://u:pg-pass@db/m"},
        "http": {"token_sha256": ["ab" * 32]},
    }
    out = redact(tree)
    assert out["kafka"] == {"sasl_password": MASK, "bootstrap_servers": ["b:9092"]}
    assert out["tables"]["storage_options"] == {"AWS_SECRET_ACCESS_KEY": MASK}
    assert out["tables"]["root"] == f"s3://AKIA:{MASK}@bucket"
    assert out["mlflow"]["tracking_uri"] == f"postgresql://u:{MASK}@db/m"
    assert out["http"] == tree["http"]  # digests are not secrets
    assert not any(s in json.dumps(out) for s in SECRETS)


def test_config_show_masks_every_secret(tmp_path: Path) -> None:
    config = {
        "stack": {"state_dir": str(tmp_path / "state")},
        "mlflow": {"tracking_uri": "postgresql://mlflow:pg-pass@db.internal:5432/mlflow"},
        "tables": {"root": "s3://AKIA:s3cr3tKey@bucket/tables"},
        "feast": {"online_store": "redis", "redis_connection_string": "cache:6379,password=hunter2"},
        "kafka": {"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_username": "svc",
                  "sasl_password": "sasl-pw"},
    }  # fmt: skip
    path = tmp_path / "lakeserve.yaml"
    path.write_text(yaml.safe_dump(config))
    shown = subprocess.run(
        [sys.executable, "-m", "lakeserve", "--config", str(path), "config", "show"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    for secret in SECRETS:
        assert secret not in shown.stdout, secret
    tree = json.loads(shown.stdout)
    assert tree["mlflow"]["tracking_uri"] == f"postgresql://mlflow:{MASK}@db.internal:5432/mlflow"
    assert tree["mlflow"]["registry_uri"] == tree["mlflow"]["tracking_uri"]
    assert tree["tables"]["root"] == f"s3://AKIA:{MASK}@bucket/tables"
    assert tree["kafka"]["sasl_username"] == "svc"  # what is not secret stays readable


def test_demo_report_masks_locations() -> None:
    report = MainReport()
    report.locations = {"mlflow": "postgresql://mlflow:pg-pass@db/mlflow", "inference table": "s3://K:s3cr3tKey@b/t"}
    text = format_main_report(report)
    assert "pg-pass" not in text
    assert "s3cr3tKey" not in text
    assert f"postgresql://mlflow:{MASK}@db/mlflow" in text


def test_log_records_and_error_messages_are_masked() -> None:
    text = "cannot read the Delta table at s3://AKIA:s3cr3tKey@bucket/t: denied; store cache:6379,password=hunter2"
    assert redact_text(text) == (
        f"cannot read the Delta table at s3://AKIA:{MASK}@bucket/t: denied; store cache:6379,password={MASK}"
    )
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("lakeserve.test_redact")
    logger.addHandler(handler)
    try:
        logger.warning("tracking at %s", "postgresql://mlflow:pg-pass@db/mlflow")
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue() == f"tracking at postgresql://mlflow:{MASK}@db/mlflow\n"
