"""How Kubernetes scales the Kafka workers' Deployment on the consumer group's lag.

Two ways, one of them rendered (``lakeserve deploy k8s --scaler keda|hpa``):

- a KEDA ``ScaledObject`` (``keda.sh/v1alpha1``) with the ``kafka`` trigger: KEDA reads the lag of
  ``kafka.group_id`` on ``kafka.requests_topic`` from the brokers (the group's committed offsets
  against the partitions' ends), with the service's TLS and SASL settings; the credentials come
  from the deployment's Secret through a ``TriggerAuthentication``;
- a ``HorizontalPodAutoscaler`` (``autoscaling/v2``) on ``lakeserve_kafka_consumer_lag_messages``,
  which each worker pod exports per partition it holds, as an External metric: it assumes a
  Prometheus that scrapes the pods and the Prometheus adapter serving the sum of that series for
  the endpoint's topic (the adapter's rule is in docs/deploy.md).

Both aim at ``lag_threshold`` messages of lag per pod. A pod runs ``serve --workers N`` and the
group gives each partition to one worker, so pods beyond ``ceil(kafka.partitions / N)`` would hold
nothing: that is the highest replica count either allows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lakeserve.pipelines.kafka_settings import KafkaSettings

LAG_METRIC = "lakeserve_kafka_consumer_lag_messages"
KEDA_API = "keda.sh/v1alpha1"
_KEDA_SASL = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}
# KEDA's authentication parameters of the kafka scaler -> the settings they come from
KEDA_FILE_PARAMETERS = {"ca": "ssl_cafile", "cert": "ssl_certfile", "key": "ssl_keyfile"}


@dataclass(frozen=True)
class Scaling:
    """The Deployment scaled, its replica bounds and the lag per pod to aim at."""

    target: str
    min_replicas: int
    max_replicas: int
    lag_threshold: int


def replica_cap(partitions: int, workers_per_pod: int) -> int:
    """The most pods that can each hold a partition: ``ceil(partitions / workers per pod)``."""
    return math.ceil(partitions / workers_per_pod)


def scaled_object(metadata: dict[str, Any], scaling: Scaling, kafka: KafkaSettings, auth: str | None) -> dict[str, Any]:
    """A KEDA ScaledObject with the kafka trigger; ``auth``: the TriggerAuthentication's name."""
    trigger: dict[str, Any] = {"type": "kafka", "metadata": kafka_trigger_metadata(kafka, scaling.lag_threshold)}
    if auth is not None:
        trigger["authenticationRef"] = {"name": auth}
    return {
        "apiVersion": KEDA_API,
        "kind": "ScaledObject",
        "metadata": metadata,
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": scaling.target},
            "minReplicaCount": scaling.min_replicas,
            "maxReplicaCount": scaling.max_replicas,
            "triggers": [trigger],
        },
    }


def kafka_trigger_metadata(kafka: KafkaSettings, lag_threshold: int) -> dict[str, str]:
    """The kafka trigger's metadata: where the group is, and its TLS and SASL modes (the
    credentials themselves are authentication parameters)."""
    metadata = {
        "bootstrapServers": ",".join(kafka.bootstrap_servers),
        "consumerGroup": kafka.group_id,
        "topic": kafka.requests_topic,
        "lagThreshold": str(lag_threshold),
        "offsetResetPolicy": "earliest",  # as the workers' consumers: a new group reads from the start
    }
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        metadata["tls"] = "enable"
    if kafka.sasl_mechanism is not None:
        metadata["sasl"] = _KEDA_SASL[kafka.sasl_mechanism]
    return metadata


def trigger_authentication(metadata: dict[str, Any], secret: str, refs: Mapping[str, str]) -> dict[str, Any]:
    """A TriggerAuthentication taking each KEDA parameter in ``refs`` from a key of ``secret``."""
    return {
        "apiVersion": KEDA_API,
        "kind": "TriggerAuthentication",
        "metadata": metadata,
        "spec": {
            "secretTargetRef": [
                {"parameter": parameter, "name": secret, "key": key} for parameter, key in refs.items()
            ]
        },
    }


def horizontal_autoscaler(metadata: dict[str, Any], scaling: Scaling, endpoint: str, topic: str) -> dict[str, Any]:
    """An autoscaling/v2 HPA on the endpoint's summed lag (External metric, an average per pod)."""
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata,
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": scaling.target},
            "minReplicas": scaling.min_replicas,
            "maxReplicas": scaling.max_replicas,
            "metrics": [
                {
                    "type": "External",
                    "external": {
                        "metric": {
                            "name": LAG_METRIC,
                            "selector": {"matchLabels": {"endpoint": endpoint, "topic": topic}},
                        },
                        "target": {"type": "AverageValue", "averageValue": str(scaling.lag_threshold)},
                    },
                }
            ],
        },
    }
