"""``lakeserve deploy k8s``: Kubernetes manifests rendered from the loaded settings.

The objects, each named ``<name>-...`` (``--name``, default: the endpoint's name):

- ``ConfigMap <name>-settings``: the effective settings as YAML, without a secret value;
- ``Secret <name>-secrets``: every secret setting as the ``LAKESERVE_...`` variable that
  :func:`~lakeserve.settings.load_settings` reads over the YAML (:mod:`lakeserve.secret_env`), the
  TLS files the settings name (mounted at the paths they name), and the SASL user name for KEDA.
  The ConfigMap and the Secret load back to the settings they were rendered from;
- ``Deployment <name>-workers``: ``lakeserve serve --workers N``, probed on its metrics endpoint
  (``metrics.port``, bound on ``0.0.0.0`` in the pod: ``/ready`` for readiness, ``/health`` for
  liveness), scaled by a KEDA ``ScaledObject`` or an HPA (:mod:`lakeserve.k8s_scaling`);
- ``Deployment`` and ``Service <name>-rest``: ``lakeserve serve --http --workers 0`` on
  ``http.port`` (``--no-rest``: none).

Each pod's ``terminationGracePeriodSeconds`` is the bound on its stop
(:func:`~lakeserve.pipelines.stop_deadline.serve_stop_timeout_s`: in-flight micro-batches finish,
rows are appended, offsets committed) plus :data:`GRACE_MARGIN_S`, and for REST the ``preStop``
pause that lets the Service stop sending requests first.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lakeserve.errors import ConfigError, format_validation_error
from lakeserve.jobs.settings import JobSettings
from lakeserve.k8s_scaling import (
    KEDA_FILE_PARAMETERS,
    Scaling,
    horizontal_autoscaler,
    replica_cap,
    scaled_object,
    trigger_authentication,
)
from lakeserve.one_host import one_host_findings
from lakeserve.pipelines.http_settings import HttpSettings
from lakeserve.pipelines.settings import yaml_ready
from lakeserve.pipelines.stop_deadline import serve_stop_timeout_s
from lakeserve.secret_env import SplitSettings, split_settings
from lakeserve.settings import Settings

CONFIG_DIR = PurePosixPath("/etc/lakeserve/config")
CONFIG_FILE = "lakeserve.yaml"
POD_HOST = "0.0.0.0"  # inside a pod: the kubelet's probes and the Service reach the pod's address
GRACE_MARGIN_S = 5  # beyond the service's own stop bound, before the kubelet kills
PRESTOP_SLEEP_S = 5  # REST: the Service stops sending to a terminating pod before it stops listening
FILE_SETTINGS = (("kafka", "ssl_cafile"), ("kafka", "ssl_certfile"), ("kafka", "ssl_keyfile"),
                 ("http", "ssl_certfile"), ("http", "ssl_keyfile"))  # fmt: skip
_DNS_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"  # RFC 1035: a Service's name
_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


class K8sOptions(BaseModel):
    """The options of ``lakeserve deploy k8s`` (their flags are the field names with dashes)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image: str = Field(min_length=1, pattern=r"^\S+$", description="container image with lakeserve installed")
    name: str | None = Field(default=None, max_length=55, pattern=_DNS_LABEL, description="default: endpoint.name")
    namespace: str | None = Field(default=None, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    workers: int = Field(default=1, ge=1, description="Kafka worker processes per pod (serve --workers)")
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int | None = Field(default=None, ge=1, description="default: ceil(kafka.partitions / workers)")
    scaler: Literal["keda", "hpa"] = "keda"
    lag_threshold: int | None = Field(default=None, ge=1, description="default: limits.max_batch_size * workers")
    rest: bool = True
    rest_replicas: int = Field(default=1, ge=1)
    env_from: list[str] = Field(default_factory=list, description="Secrets whose keys become every pod's environment")

    @field_validator("env_from")
    @classmethod
    def _secret_names(cls, names: list[str]) -> list[str]:
        bad = [n for n in names if len(n) > 253 or not re.match(_DNS_SUBDOMAIN, n)]
        if bad:
            raise ValueError(f"{bad} are not Secret names (lowercase DNS subdomains)")
        return names


@dataclass(frozen=True)
class Manifests:
    """The objects in the order to apply them, and what only works on one host (warnings)."""

    objects: list[dict[str, Any]]
    warnings: list[str]


def k8s_options(values: Mapping[str, Any]) -> K8sOptions:
    """The options from the command line; a bad one raises :class:`ConfigError` naming its flag."""
    try:
        return K8sOptions.model_validate({k: v for k, v in values.items() if k in K8sOptions.model_fields})
    except ValidationError as exc:
        lines = [
            f"  --{str(err['loc'][0]).replace('_', '-') if err['loc'] else '(options)'}: "
            f"{err['msg'].removeprefix('Value error, ')}"
            for err in exc.errors(include_url=False)
        ]
        raise ConfigError("invalid options of `lakeserve deploy k8s`:\n" + "\n".join(lines)) from None


def render(settings: Settings, options: K8sOptions) -> Manifests:
    """Every object for ``settings`` (see the module docstring); :class:`ConfigError` naming the
    setting or the option when a pod could not run with them."""
    name = _name(settings, options)
    _pod_settings(settings, options.rest)
    split = split_settings(settings)
    files = _pod_files(settings)
    scaling = _scaling(settings, options, name)
    secret_data = {**split.env, **{key: content for key, (_, content) in files.items()}}
    keda_refs = _keda_refs(settings, split, files)
    if settings.kafka.sasl_username is not None and options.scaler == "keda":
        secret_data["kafka.sasl_username"] = settings.kafka.sasl_username
    config_text = _config_text(split, f"{name}-secrets")
    pods = _Pods(settings, options, name, split, files, _digest(config_text, secret_data))
    objects = [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(options, f"{name}-settings", name, "settings"),
         "data": {CONFIG_FILE: config_text}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": _meta(options, f"{name}-secrets", name, "settings"),
         "type": "Opaque", "data": {k: _b64(v) for k, v in sorted(secret_data.items())}},
        pods.workers(),
        *_scaler(settings, options, name, scaling, keda_refs),
    ]  # fmt: skip
    if options.rest:
        objects += [pods.rest(), pods.rest_service()]
    return Manifests(objects, one_host_findings(settings) + _uneven(settings, options))


def dump(objects: Sequence[Mapping[str, Any]]) -> str:
    """The objects as one multi-document YAML stream (``kubectl apply -f -``)."""
    return yaml.dump_all(objects, Dumper=_Dumper, sort_keys=False, explicit_start=True)


def write(objects: Sequence[Mapping[str, Any]], folder: Path) -> list[Path]:
    """One file per object in ``folder`` (``kubectl apply -f folder`` takes them in this order);
    the Secret's file is readable by its owner only."""
    paths = []
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for index, obj in enumerate(objects, start=1):
            path = folder / f"{index:02d}-{str(obj['kind']).lower()}-{obj['metadata']['name']}.yaml"
            mode = 0o600 if obj["kind"] == "Secret" else 0o644
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            os.fchmod(fd, mode)  # a file that was there keeps its mode otherwise
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(yaml.dump(dict(obj), Dumper=_Dumper, sort_keys=False))
            paths.append(path)
    except OSError as exc:
        raise ConfigError(f"--out {folder}: cannot write the manifests there: {exc.strerror}") from None
    return paths


class _Pods:
    """The two Deployments and the Service: what their pods share, built once."""

    def __init__(
        self, settings: Settings, options: K8sOptions, name: str, split: SplitSettings,
        files: dict[str, tuple[str, str]], digest: str,
    ) -> None:  # fmt: skip
        self.settings, self.options, self.name, self.digest = settings, options, name, digest
        secret = f"{name}-secrets"
        self.env = [{"name": k, "valueFrom": {"secretKeyRef": {"name": secret, "key": k}}} for k in sorted(split.env)]
        self.env_from = [{"secretRef": {"name": s}} for s in options.env_from]
        self.mounts: list[dict[str, Any]] = [
            {"name": "settings", "mountPath": str(CONFIG_DIR), "readOnly": True},
            {"name": "state", "mountPath": str(settings.stack.state_dir)},
            *(_file_mount(path, key) for key, (path, _) in files.items()),
        ]
        self.volumes: list[dict[str, Any]] = [
            {"name": "settings", "configMap": {"name": f"{name}-settings"}},
            {"name": "state", "emptyDir": {}},
        ]
        if files:
            items = [{"key": key, "path": key} for key in files]
            self.volumes.append({"name": "files", "secret": {"secretName": secret, "items": items}})

    def workers(self) -> dict[str, Any]:
        port = self.settings.metrics.port
        assert port, "checked by _pod_settings"
        env: list[dict[str, Any]] = [{"name": "LAKESERVE_METRICS__HOST", "value": POD_HOST}, *self.env]
        grace = math.ceil(serve_stop_timeout_s(self.settings, self.options.workers, http=False)) + GRACE_MARGIN_S
        container = self._container("workers", ["serve", "--workers", str(self.options.workers)], env,
                                    {"name": "metrics", "containerPort": port}, "HTTP")  # fmt: skip
        annotations = {"prometheus.io/scrape": "true", "prometheus.io/port": str(port),
                       "prometheus.io/path": "/metrics"}  # fmt: skip
        strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
        return self._deployment("workers", None, strategy, container, grace, annotations)

    def rest(self) -> dict[str, Any]:
        http = self.settings.http
        args = ["serve", "--http", "--workers", "0", "--host", POD_HOST]
        container = self._container("rest", args, self.env, {"name": "http", "containerPort": http.port},
                                    "HTTPS" if http.tls else "HTTP")  # fmt: skip
        container["lifecycle"] = {"preStop": {"sleep": {"seconds": PRESTOP_SLEEP_S}}}
        grace = PRESTOP_SLEEP_S + math.ceil(serve_stop_timeout_s(self.settings, 0, http=True)) + GRACE_MARGIN_S
        strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
        return self._deployment("rest", self.options.rest_replicas, strategy, container, grace, {})

    def rest_service(self) -> dict[str, Any]:
        port = self.settings.http.port
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _meta(self.options, f"{self.name}-rest", self.name, "rest"),
            "spec": {
                "type": "ClusterIP",
                "selector": _selector(self.name, "rest"),
                "ports": [{"name": "https" if self.settings.http.tls else "http", "port": port, "targetPort": "http"}],
            },
        }

    def _container(
        self, component: str, args: list[str], env: list[dict[str, Any]], port: dict[str, Any], scheme: str
    ) -> dict[str, Any]:
        def probe(path: str, period_s: int, failures: int) -> dict[str, Any]:
            return {"httpGet": {"path": path, "port": port["name"], "scheme": scheme}, "periodSeconds": period_s,
                    "timeoutSeconds": 5, "failureThreshold": failures}  # fmt: skip

        container: dict[str, Any] = {
            "name": component,
            "image": self.options.image,
            "command": ["lakeserve"],
            "args": ["--config", str(CONFIG_DIR / CONFIG_FILE), *args],
            "env": env,
            "ports": [port],
            "readinessProbe": probe("/ready", 5, 2),
            "livenessProbe": probe("/health", 10, 3),
            "volumeMounts": self.mounts,
        }
        if self.env_from:
            container["envFrom"] = self.env_from
        return container

    def _deployment(
        self, component: str, replicas: int | None, strategy: dict[str, Any], container: dict[str, Any],
        grace_s: int, annotations: dict[str, str],
    ) -> dict[str, Any]:  # fmt: skip
        spec: dict[str, Any] = {} if replicas is None else {"replicas": replicas}  # None: the autoscaler's
        spec |= {
            "selector": {"matchLabels": _selector(self.name, component)},
            "strategy": strategy,
            "template": {
                "metadata": {
                    "labels": _labels(self.name, component),
                    "annotations": {"lakeserve/settings-sha256": self.digest, **annotations},
                },
                "spec": {"terminationGracePeriodSeconds": grace_s, "containers": [container], "volumes": self.volumes},
            },
        }
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": _meta(self.options, f"{self.name}-{component}", self.name, component),
            "spec": spec,
        }


def _name(settings: Settings, options: K8sOptions) -> str:
    if options.name is not None:
        return options.name
    name = settings.endpoint.name.lower().replace("_", "-")
    if len(name) > 55 or not re.match(_DNS_LABEL, name):
        raise ConfigError(
            f"--name: endpoint.name {settings.endpoint.name!r} is no Kubernetes name (a lowercase letter, then "
            "letters, digits or '-', at most 55); give --name"
        )
    return name


def _scaling(settings: Settings, options: K8sOptions, name: str) -> Scaling:
    partitions = settings.kafka.partitions
    if options.workers > partitions:
        raise ConfigError(
            f"--workers {options.workers} is more than kafka.partitions ({partitions}): the workers beyond "
            "it would hold no partition, and their pod would never be ready"
        )
    cap = replica_cap(partitions, options.workers)
    top = options.max_replicas if options.max_replicas is not None else cap
    if top > cap:
        raise ConfigError(
            f"--max-replicas {top} is more than kafka.partitions ({partitions}) allow with --workers "
            f"{options.workers} per pod: at most ceil({partitions} / {options.workers}) = {cap}"
        )
    if options.min_replicas > top:
        raise ConfigError(f"--min-replicas {options.min_replicas} is more than the replicas allowed ({top})")
    if options.min_replicas == 0 and options.scaler == "hpa":
        raise ConfigError("--min-replicas 0 needs --scaler keda (a HorizontalPodAutoscaler keeps at least 1)")
    lag = options.lag_threshold or settings.endpoint.limits.max_batch_size * options.workers
    return Scaling(f"{name}-workers", options.min_replicas, top, lag)


def _scaler(
    settings: Settings, options: K8sOptions, name: str, scaling: Scaling, keda_refs: dict[str, str]
) -> list[dict[str, Any]]:
    meta = _meta(options, f"{name}-workers", name, "workers")
    if options.scaler == "hpa":
        for field, value in (("endpoint.name", settings.endpoint.name), ("kafka.requests_topic",
                             settings.kafka.requests_topic)):  # fmt: skip
            if len(value) > 63 or not _LABEL_VALUE.match(value):
                raise ConfigError(f"{field}: {value!r} is no label value for the HPA's metric selector; --scaler keda")
        return [horizontal_autoscaler(meta, scaling, settings.endpoint.name, settings.kafka.requests_topic)]
    if not keda_refs:
        return [scaled_object(meta, scaling, settings.kafka, None)]
    auth = f"{name}-kafka"
    auth_meta = _meta(options, auth, name, "workers")
    return [trigger_authentication(auth_meta, f"{name}-secrets", keda_refs),
            scaled_object(meta, scaling, settings.kafka, auth)]  # fmt: skip


def _keda_refs(settings: Settings, split: SplitSettings, files: dict[str, tuple[str, str]]) -> dict[str, str]:
    """KEDA's kafka authentication parameters -> the Secret's keys that hold them."""
    refs = {}
    if settings.kafka.sasl_username is not None:
        refs["username"] = "kafka.sasl_username"
        password = split.env_name("kafka", "sasl_password")
        if password is not None:
            refs["password"] = password
    for parameter, field in KEDA_FILE_PARAMETERS.items():
        if f"kafka.{field}" in files:
            refs[parameter] = f"kafka.{field}"
    return refs


def _pod_files(settings: Settings) -> dict[str, tuple[str, str]]:
    """The files the settings name that a pod needs (TLS): Secret key -> (path in the pod, content)."""
    files: dict[str, tuple[str, str]] = {}
    for section, field in FILE_SETTINGS:
        path = getattr(getattr(settings, section), field)
        if path is None or any(p == str(path) for p, _ in files.values()):
            continue  # one mount per path, though two settings name it
        if not path.is_absolute():
            raise ConfigError(f"{section}.{field}: {path} is relative; the pods mount it at its path: make it absolute")
        if PurePosixPath(path).is_relative_to(CONFIG_DIR):
            raise ConfigError(f"{section}.{field}: {path} is in {CONFIG_DIR}, where the pods mount their settings")
        try:
            content = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{section}.{field}: cannot read {path} to put it in the Secret: {exc}") from None
        files[f"{section}.{field}"] = (str(path), content)
    return files


def _pod_settings(settings: Settings, rest: bool) -> None:
    """The settings as each pod loads them: the workers' metrics endpoint on the pod's address, the
    REST server on it with ``--host``. A rule they break is an error now, not a crash loop."""
    state = PurePosixPath(settings.stack.state_dir)
    if state == CONFIG_DIR or state.is_relative_to(CONFIG_DIR) or CONFIG_DIR.is_relative_to(state):
        raise ConfigError(f"stack.state_dir: {state} overlaps {CONFIG_DIR}, where the pods mount their settings")
    if not settings.metrics.enabled:
        raise ConfigError("metrics.port: 0 turns off the endpoint that probes the worker pods; set a port")
    if rest and settings.http.port == 0:
        raise ConfigError("http.port: 0 picks a free port at start; the REST Service needs a fixed one")
    tree = yaml_ready(settings.model_dump(mode="python"))
    try:
        JobSettings.model_validate({**tree, "metrics": {**tree["metrics"], "host": POD_HOST}})
    except ValidationError as exc:
        raise ConfigError(f"the worker pods bind metrics.host {POD_HOST}: " + format_validation_error(exc)) from None
    if not rest:
        return
    try:
        HttpSettings.model_validate({**tree["http"], "host": POD_HOST})
    except ValidationError as exc:
        where = f"the REST pods bind {POD_HOST} (or render none: --no-rest): "
        raise ConfigError(where + format_validation_error(exc, section="http")) from None


def _uneven(settings: Settings, options: K8sOptions) -> list[str]:
    partitions, workers = settings.kafka.partitions, options.workers
    if partitions % workers == 0:
        return []
    return [
        f"kafka.partitions ({partitions}) is not a multiple of --workers {workers}: at the most replicas some "
        "workers hold no partition, and their pod's /ready stays 503 (which holds up a rollout)"
    ]


def _config_text(split: SplitSettings, secret: str) -> str:
    header = (
        "# lakeserve settings, rendered by `lakeserve deploy k8s`; the secrets are not here but in the\n"
        f"# Secret {secret}, as LAKESERVE_... environment variables that load_settings reads over this file\n"
    )
    return header + yaml.safe_dump(split.public, sort_keys=False)


def _digest(config_text: str, secret_data: Mapping[str, str]) -> str:
    """Changes with the settings or a secret, so that a changed deployment restarts its pods."""
    return hashlib.sha256(json.dumps([config_text, sorted(secret_data.items())]).encode()).hexdigest()


def _meta(options: K8sOptions, name: str, instance: str, component: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if options.namespace is not None:
        meta["namespace"] = options.namespace
    meta["labels"] = _labels(instance, component)
    return meta


def _file_mount(path: str, key: str) -> dict[str, Any]:
    return {"name": "files", "mountPath": path, "subPath": key, "readOnly": True}


def _selector(instance: str, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/instance": instance, "app.kubernetes.io/component": component}


def _labels(instance: str, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "lakeserve", **_selector(instance, component)}


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


class _Dumper(yaml.SafeDumper):
    """PyYAML's safe dumper, with text of several lines (the settings file) as a literal block."""


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _text)
