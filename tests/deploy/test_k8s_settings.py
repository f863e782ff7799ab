"""The settings travel to the pods as a ConfigMap (the YAML, no secret in it) and a Secret (every
secret as the LAKESERVE_ variable load_settings reads over the YAML), and load back there into the
settings they were rendered from."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from lakeserve.k8s import K8sOptions, dump, render
from lakeserve.pipelines.settings import yaml_ready
from lakeserve.secret_env import split_settings
from lakeserve.settings import Settings, load_settings


def tree(settings: Settings) -> dict[str, Any]:
    """Every value, secrets revealed: two trees equal by this are the same settings."""
    result: dict[str, Any] = yaml_ready(settings.model_dump(mode="python"))
    return result


def pod_environment(deployment: dict[str, Any], secret: dict[str, Any], *, secrets_only: bool) -> dict[str, str]:
    """The variables the pod's container gets: literal ones, and those from the Secret's keys."""
    env = {}
    for var in deployment["spec"]["template"]["spec"]["containers"][0]["env"]:
        if "valueFrom" in var:
            ref = var["valueFrom"]["secretKeyRef"]
            assert ref["name"] == secret["metadata"]["name"]
            env[var["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
        elif not secrets_only:
            env[var["name"]] = var["value"]
    return env


def load_in_pod(objects: list[dict[str, Any]], folder: Path, monkeypatch: pytest.MonkeyPatch, *,
                secrets_only: bool = True) -> Settings:  # fmt: skip
    """The settings as the workers' pod loads them: the ConfigMap's file, the Secret's variables."""
    config_map = next(o for o in objects if o["kind"] == "ConfigMap")
    secret = next(o for o in objects if o["kind"] == "Secret")
    workers = next(o for o in objects if o["kind"] == "Deployment")
    path = folder / "pod" / "lakeserve.yaml"
    path.parent.mkdir()
    path.write_text(config_map["data"]["lakeserve.yaml"])
    for name, value in pod_environment(workers, secret, secrets_only=secrets_only).items():
        monkeypatch.setenv(name, value)
    return load_settings(path)


def test_the_configmap_and_the_secret_load_back_to_the_same_settings(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = render(settings, K8sOptions(image="img")).objects
    assert tree(load_in_pod(objects, tmp_path, monkeypatch)) == tree(settings)


def test_in_the_pod_only_the_metrics_host_differs(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = render(settings, K8sOptions(image="img")).objects
    in_pod = load_in_pod(objects, tmp_path, monkeypatch, secrets_only=False)
    assert in_pod.metrics.host == "0.0.0.0"
    assert tree(in_pod) | {"metrics": {}} == tree(settings) | {"metrics": {}}


def test_no_secret_leaves_the_secret(settings: Settings, secret_values: tuple[str, ...]) -> None:
    objects = render(settings, K8sOptions(image="img")).objects
    secret = next(o for o in objects if o["kind"] == "Secret")
    inside = "\n".join(base64.b64decode(value).decode() for value in secret["data"].values())
    outside = dump([o for o in objects if o["kind"] != "Secret"])
    for value in secret_values:
        assert value in inside, value
        assert value not in outside, value
    config = next(o for o in objects if o["kind"] == "ConfigMap")["data"]["lakeserve.yaml"]
    public = yaml.safe_load(config)
    assert public["kafka"]["sasl_username"] == "scorer"  # what is not secret stays in the ConfigMap
    assert public["spark"]["conf"] == {"spark.sql.ansi.enabled": "true"}
    assert "jobs" not in public["schedule"]  # a list with a secret in it travels whole, in the Secret


def test_each_secret_setting_has_its_own_variable(settings: Settings) -> None:
    env = split_settings(settings).env
    assert env["LAKESERVE_KAFKA__SASL_PASSWORD"] == "sasl-pw"
    assert env["LAKESERVE_FEAST__REDIS_CONNECTION_STRING"] == "redis.internal:6379,password=redis-pw"
    assert env["LAKESERVE_TABLES__ROOT"] == "s3://AKIA:s3-secret@bucket/tables"
    assert env["LAKESERVE_MLFLOW__TRACKING_URI"] == env["LAKESERVE_MLFLOW__REGISTRY_URI"]
    # inside a mapping: the secret entries as JSON, the keys' case kept
    assert json.loads(env["LAKESERVE_STACK__KAFKA_SCRAM_USERS"]) == {"Scorer": "scram-pw"}
    assert json.loads(env["LAKESERVE_TABLES__STORAGE_OPTIONS"])["AWS_SECRET_ACCESS_KEY"] == "s3-option-secret"
    assert json.loads(env["LAKESERVE_SPARK__CONF"]) == {"spark.hadoop.fs.s3a.secret.key": "spark-s3-secret"}
    jobs = json.loads(env["LAKESERVE_SCHEDULE__JOBS"])
    assert [j["job"] for j in jobs] == ["monitor", "batch-score"]
    assert sorted(env) == sorted([
        "LAKESERVE_KAFKA__SASL_PASSWORD", "LAKESERVE_FEAST__REDIS_CONNECTION_STRING", "LAKESERVE_TABLES__ROOT",
        "LAKESERVE_TABLES__STORAGE_OPTIONS", "LAKESERVE_MLFLOW__TRACKING_URI", "LAKESERVE_MLFLOW__REGISTRY_URI",
        "LAKESERVE_STACK__KAFKA_SCRAM_USERS", "LAKESERVE_SPARK__CONF", "LAKESERVE_SCHEDULE__JOBS",
    ])  # fmt: skip


def test_the_default_settings_load_back_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(overrides={"stack": {"state_dir": str(tmp_path / "state")}})
    objects = render(settings, K8sOptions(image="img", rest=False)).objects
    assert tree(load_in_pod(objects, tmp_path, monkeypatch)) == tree(settings)
