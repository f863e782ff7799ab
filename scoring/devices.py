"""Where a served entity runs: its device, from its ``workload_type``, and how each MLflow flavor
is placed on it.

A ``CPU`` entity runs on ``cpu``; every GPU workload type (``GPU``, ``GPU_SMALL``, ...: the names
Databricks uses) runs on ``cuda`` (the first visible CUDA device). The device is chosen when the
model loads, never left to the flavor:

- ``mlflow.pytorch``: ``model_config={"device": ...}``; MLflow loads the weights onto it
  (``map_location``) and moves each batch there.
- ``mlflow.transformers``: the pipeline is built on the device (``MLFLOW_DEFAULT_PREDICTION_DEVICE``
  while it loads: 0 for the first CUDA device, -1 for the CPU); with
  ``MLFLOW_HUGGINGFACE_USE_DEVICE_MAP`` set, accelerate's ``device_map`` places a GPU entity
  instead, and a CPU entity is refused (a device map may put it on a GPU).
- a custom pyfunc (``mlflow.pyfunc.model``) logged with a ``device`` key in its ``model_config``
  (``mlflow.pyfunc.log_model(..., model_config={"device": None})``) is told its device there and
  reads it in ``load_context`` (``context.model_config["device"]``).
- any other flavor (sklearn, xgboost, a pyfunc without that key) has no device to set: it runs on
  the CPU, and a GPU entity of such a model is refused when it loads, rather than served on a GPU
  machine while running on its CPU.

A process whose served entities are all ``CPU`` also hides the GPUs from itself
(:func:`hide_gpus_unless_needed`, ``CUDA_VISIBLE_DEVICES=""`` at the start of a worker or REST
server process, before any model loads), so no library inside a model can pick CUDA by itself.
The device a record was scored on is logged with it (``request_metadata["device"]``).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from lakeserve.errors import ConfigError
from lakeserve.scoring.settings import ServedEntity

log = logging.getLogger("lakeserve.scoring.devices")

Device = Literal["cpu", "cuda"]
CUDA_VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"
PREDICTION_DEVICE = "MLFLOW_DEFAULT_PREDICTION_DEVICE"  # read by mlflow.transformers when it loads
USE_DEVICE_MAP = "MLFLOW_HUGGINGFACE_USE_DEVICE_MAP"

PYTORCH, TRANSFORMERS, PYFUNC = "mlflow.pytorch", "mlflow.transformers", "mlflow.pyfunc.model"
_env_lock = threading.Lock()  # loads in one process set the transformers variable one at a time


def entity_device(entity: ServedEntity) -> Device:
    return "cuda" if entity.on_gpu else "cpu"


def cuda_device_count() -> int:
    """CUDA devices this process can use: none when ``CUDA_VISIBLE_DEVICES`` hides them all or
    torch is not installed (nothing here could place a model on one), else torch's count."""
    if os.environ.get(CUDA_VISIBLE_DEVICES, "unset").strip() in {"", "-1"}:
        return 0
    if importlib.util.find_spec("torch") is None:
        return 0
    return int(importlib.import_module("torch").cuda.device_count())


def require_cuda(entity: ServedEntity) -> None:
    """Raise ConfigError unless a CUDA device is visible (GPU workload types only)."""
    if not entity.on_gpu:
        return
    if cuda_device_count() > 0:
        return
    if os.environ.get(CUDA_VISIBLE_DEVICES, "unset").strip() in {"", "-1"}:
        why = (
            f"{CUDA_VISIBLE_DEVICES} hides them in this process (a worker started with CPU entities only "
            "hides the GPUs; restart the service to serve a GPU entity)"
        )
    elif importlib.util.find_spec("torch") is None:
        why = "torch is not installed"
    else:
        why = "torch sees none"
    raise ConfigError(
        f"served entity {entity.name!r} asks for GPU ({entity.workload_type}) but no CUDA device is visible: {why}"
    )


def hide_gpus_unless_needed(entities: Iterable[ServedEntity]) -> bool:
    """Hide every GPU from this process when none of ``entities`` runs on one; call it at the
    start of a process that serves them, before any model loads. An explicit
    ``CUDA_VISIBLE_DEVICES`` is left as the operator set it. True when the GPUs were hidden."""
    if any(e.on_gpu for e in entities) or CUDA_VISIBLE_DEVICES in os.environ:
        return False
    os.environ[CUDA_VISIBLE_DEVICES] = ""
    return True


@dataclass(frozen=True, slots=True)
class Placement:
    """How one model is put on its device: the ``model_config`` passed to MLflow's loader and
    the environment set while it loads."""

    device: Device
    model_config: dict[str, Any] | None = None
    env: dict[str, str] = field(default_factory=dict)


def placement(entity: ServedEntity, loader_module: str | None, logged_config: dict[str, Any] | None) -> Placement:
    """Where and how ``entity``'s model (of pyfunc ``loader_module``, logged with
    ``logged_config`` as its pyfunc model_config) is placed; ConfigError when a GPU entity's
    model cannot be placed on a GPU."""
    device = entity_device(entity)
    if loader_module == PYTORCH:
        return Placement(device, model_config={"device": device})
    if loader_module == TRANSFORMERS:
        if _truthy(os.environ.get(USE_DEVICE_MAP)):
            if device == "cpu":
                raise ConfigError(
                    f"served entity {entity.name!r} is a CPU entity but {USE_DEVICE_MAP} asks accelerate to "
                    "place it with a device map: unset it, or serve the entity on a GPU workload type"
                )
            return Placement(device)
        return Placement(device, env={PREDICTION_DEVICE: "0" if device == "cuda" else "-1"})
    if loader_module == PYFUNC and logged_config is not None and "device" in logged_config:
        return Placement(device, model_config={"device": device})
    if device == "cuda":
        raise ConfigError(
            f"served entity {entity.name!r} asks for GPU ({entity.workload_type}) but its model "
            f"({loader_module or 'no pyfunc loader'}) cannot be placed on a device: serve it as CPU, or log a "
            "pytorch or transformers model, or a pyfunc with model_config={'device': None} that reads "
            "context.model_config['device']"
        )
    return Placement("cpu")


@contextmanager
def placed(p: Placement) -> Iterator[None]:
    """The placement's environment set for the duration of a load, then restored."""
    if not p.env:
        yield
        return
    with _env_lock:
        saved = {k: os.environ.get(k) for k in p.env}
        os.environ.update(p.env)
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def _truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() in {"1", "true", "yes"}
