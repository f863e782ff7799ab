"""The objects of ``lakeserve deploy k8s`` are what the Kubernetes API takes: each built-in one
deserialises into the ``kubernetes`` client's typed model and serialises back to itself (so no field
is unknown to the API or of the wrong type), and KEDA's objects validate against the schema of
KEDA's own CRDs (tests/deploy/keda, from kedacore/keda v2.20.2), with unknown fields refused as
``kubectl apply`` with strict field validation refuses them."""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from kubernetes.client import ApiClient

from lakeserve.k8s import K8sOptions, render
from lakeserve.settings import Settings

KEDA = Path(__file__).parent / "keda"
TYPED = {"ConfigMap": "V1ConfigMap", "Secret": "V1Secret", "Deployment": "V1Deployment", "Service": "V1Service",
         "HorizontalPodAutoscaler": "V2HorizontalPodAutoscaler"}  # fmt: skip
KEDA_SCHEMAS = {"ScaledObject": "scaledobjects", "TriggerAuthentication": "triggerauthentications"}


def by_kind(objects: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    kinds: dict[str, list[dict[str, Any]]] = {}
    for obj in objects:
        kinds.setdefault(obj["kind"], []).append(obj)
    return kinds


def round_trip(obj: dict[str, Any], model: str) -> Any:
    """``obj`` through the client's typed model and back, as the API server's JSON."""
    api = ApiClient()
    typed = api.deserialize(json.dumps(obj), model, "application/json")
    assert type(typed).__name__ == model
    return api.sanitize_for_serialization(typed)


def strict(schema: Any) -> Any:
    """The CRD schema refusing fields it does not declare (the API server would prune them)."""
    schema = copy.deepcopy(schema)

    def close(node: Any) -> None:
        if isinstance(node, dict):
            if "properties" in node and "additionalProperties" not in node and not node.get(
                "x-kubernetes-preserve-unknown-fields"
            ):
                node["additionalProperties"] = False
            for value in node.values():
                close(value)
        elif isinstance(node, list):
            for value in node:
                close(value)

    close(schema)
    return schema


def keda_validator(kind: str) -> jsonschema.Draft7Validator:
    schema = strict(yaml.safe_load((KEDA / f"{KEDA_SCHEMAS[kind]}.v1alpha1.schema.yaml").read_text()))
    return jsonschema.Draft7Validator(schema)


@pytest.mark.parametrize("scaler", ["keda", "hpa"])
def test_every_object_is_a_valid_kubernetes_object(settings: Settings, scaler: str) -> None:
    objects = render(settings, K8sOptions(image="registry.example/lakeserve:1", workers=2, scaler=scaler)).objects
    for obj in objects:
        if obj["kind"] in TYPED:
            assert round_trip(obj, TYPED[obj["kind"]]) == obj, obj["kind"]
        else:
            assert obj["apiVersion"] == "keda.sh/v1alpha1"
            keda_validator(obj["kind"]).validate(obj)
            assert round_trip(obj["metadata"], "V1ObjectMeta") == obj["metadata"]
    kinds = sorted(by_kind(objects))
    expected = {"keda": ["ScaledObject", "TriggerAuthentication"], "hpa": ["HorizontalPodAutoscaler"]}[scaler]
    assert kinds == sorted(["ConfigMap", "Secret", "Deployment", "Service", *expected])


def test_the_strict_keda_schema_refuses_a_misspelt_field(settings: Settings) -> None:
    scaled = by_kind(render(settings, K8sOptions(image="i")).objects)["ScaledObject"][0]
    keda_validator("ScaledObject").validate(scaled)
    scaled["spec"]["maxReplicas"] = scaled["spec"].pop("maxReplicaCount")
    with pytest.raises(jsonschema.ValidationError, match="maxReplicas"):
        keda_validator("ScaledObject").validate(scaled)


def test_the_keda_trigger_reads_the_groups_lag_with_its_tls_and_sasl(settings: Settings) -> None:
    kinds = by_kind(render(settings, K8sOptions(image="i", workers=2, lag_threshold=300)).objects)
    scaled, auth, secret = kinds["ScaledObject"][0], kinds["TriggerAuthentication"][0], kinds["Secret"][0]
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == "fraud-detection-workers"
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (1, 3)  # ceil(6 partitions / 2 workers)
    trigger = spec["triggers"][0]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"] == {
        "bootstrapServers": "kafka-0.kafka:9093,kafka-1.kafka:9093", "consumerGroup": "scorers",
        "topic": "fraud.requests", "lagThreshold": "300", "offsetResetPolicy": "earliest",
        "tls": "enable", "sasl": "scram_sha512",
    }  # fmt: skip
    assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"]}
    refs = {r["parameter"]: r for r in auth["spec"]["secretTargetRef"]}
    assert sorted(refs) == ["ca", "cert", "key", "password", "username"]
    values = {p: base64.b64decode(secret["data"][r["key"]]).decode() for p, r in refs.items()}
    assert all(r["name"] == secret["metadata"]["name"] for r in refs.values())
    assert (values["username"], values["password"]) == ("scorer", "sasl-pw")
    assert values["ca"] == Path(settings.kafka.ssl_cafile or "").read_text()
    assert "client-key-material" in values["key"]


def test_without_credentials_the_trigger_has_no_authentication(settings: Settings) -> None:
    plain = settings.model_copy(update={"kafka": settings.kafka.model_copy(update={
        "security_protocol": "PLAINTEXT", "sasl_mechanism": None, "sasl_username": None, "sasl_password": None,
        "ssl_cafile": None, "ssl_certfile": None, "ssl_keyfile": None})})  # fmt: skip
    kinds = by_kind(render(plain, K8sOptions(image="i")).objects)
    trigger = kinds["ScaledObject"][0]["spec"]["triggers"][0]
    assert "TriggerAuthentication" not in kinds
    assert "authenticationRef" not in trigger
    assert not {"tls", "sasl"} & set(trigger["metadata"])
    assert trigger["metadata"]["lagThreshold"] == "256"  # limits.max_batch_size per worker


def test_the_hpa_scales_on_the_exported_lag(settings: Settings) -> None:
    hpa = by_kind(render(settings, K8sOptions(image="i", scaler="hpa", max_replicas=4)).objects)[
        "HorizontalPodAutoscaler"
    ][0]
    spec = hpa["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "fraud-detection-workers"}
    assert (spec["minReplicas"], spec["maxReplicas"]) == (1, 4)
    external = spec["metrics"][0]["external"]
    assert external["metric"]["name"] == "lakeserve_kafka_consumer_lag_messages"
    assert external["metric"]["selector"]["matchLabels"] == {"endpoint": "fraud-detection", "topic": "fraud.requests"}
    assert external["target"] == {"type": "AverageValue", "averageValue": "256"}


def test_the_pods_probe_ready_and_health_and_get_their_grace_period(settings: Settings) -> None:
    kinds = by_kind(render(settings, K8sOptions(image="img", workers=2, namespace="scoring")).objects)
    workers, rest = kinds["Deployment"]
    assert all(obj["metadata"]["namespace"] == "scoring" for obj in
               [o for objs in kinds.values() for o in objs])  # fmt: skip
    pod = workers["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"] == ["--config", "/etc/lakeserve/config/lakeserve.yaml", "serve", "--workers", "2"]
    assert {"name": "LAKESERVE_METRICS__HOST", "value": "0.0.0.0"} in container["env"]
    assert container["ports"] == [{"name": "metrics", "containerPort": settings.metrics.port}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "metrics", "scheme": "HTTP"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "metrics", "scheme": "HTTP"}
    assert "replicas" not in workers["spec"]  # the autoscaler's
    # kafka.stop_timeout_ms 8 s + the supervisor's 1 s kill margin + 5 s metrics endpoint + 2 s, then 5 s margin
    assert pod["terminationGracePeriodSeconds"] == 8 + 1 + 5 + 2 + 5

    rest_pod = rest["spec"]["template"]["spec"]
    rest_container = rest_pod["containers"][0]
    assert rest_container["args"][2:] == ["serve", "--http", "--workers", "0", "--host", "0.0.0.0"]
    assert rest_container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http", "scheme": "HTTPS"}
    assert rest_container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http", "scheme": "HTTPS"}
    assert rest_container["lifecycle"] == {"preStop": {"sleep": {"seconds": 5}}}
    # 5 s preStop + limits.timeout_s 20 s of requests in flight + 8 s last append + 2 s, then 5 s margin
    assert rest_pod["terminationGracePeriodSeconds"] == 5 + 20 + 8 + 2 + 5
    service = kinds["Service"][0]
    assert service["spec"]["selector"] == rest["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"] == [{"name": "https", "port": settings.http.port, "targetPort": "http"}]


def test_the_pods_mount_the_settings_the_state_folder_and_the_tls_files(settings: Settings) -> None:
    kinds = by_kind(render(settings, K8sOptions(image="img")).objects)
    secret = kinds["Secret"][0]
    for deployment in kinds["Deployment"]:
        pod = deployment["spec"]["template"]["spec"]
        mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
        assert mounts[str(settings.stack.state_dir)]["name"] == "state"
        assert mounts["/etc/lakeserve/config"]["name"] == "settings"
        for path in (settings.kafka.ssl_cafile, settings.kafka.ssl_keyfile, settings.http.ssl_certfile):
            assert path is not None
            mount = mounts[str(path)]
            assert base64.b64decode(secret["data"][mount["subPath"]]).decode() == path.read_text()
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["settings"]["configMap"]["name"] == kinds["ConfigMap"][0]["metadata"]["name"]
        assert volumes["files"]["secret"]["secretName"] == secret["metadata"]["name"]


def test_without_rest_there_is_no_rest_deployment_or_service(settings: Settings) -> None:
    kinds = by_kind(render(settings, K8sOptions(image="img", rest=False)).objects)
    assert [d["metadata"]["name"] for d in kinds["Deployment"]] == ["fraud-detection-workers"]
    assert "Service" not in kinds


def test_the_round_trip_catches_a_misspelt_field(settings: Settings) -> None:
    deployment = by_kind(render(settings, K8sOptions(image="img")).objects)["Deployment"][0]
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {"periodSeconds": 10}
    assert round_trip(deployment, "V1Deployment") != deployment
