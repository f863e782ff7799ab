"""Small MLflow models for tests of failure paths, shipped so any process can load them.

``GuardedModel`` scores like a tiny logistic model over the demo's inputs and raises on a
negative ``amount``, the way a user's model raises on input it was never meant to see;
``StallingModel`` hangs and ``CrashingModel`` kills its process on one marked amount;
``ThresholdModel`` takes a ``threshold`` param (log it with :data:`THRESHOLD_PARAMS` in its
signature) that decides ``prediction`` from the probability; ``SlowModel`` takes a ``sleep_s``
param (:data:`SLOW_PARAMS`) and holds its caller that long, a slow model call; ``DeviceReportingModel`` answers
with the device its ``model_config`` told it and its process's ``CUDA_VISIBLE_DEVICES``.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import numpy as np
import pandas as pd
from mlflow.pyfunc.model import PythonModel


class GuardedModel(PythonModel):
    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        amount = model_input["amount"].astype(float)
        if (amount < 0).any():
            raise ValueError("amount must not be negative")
        probability = 1.0 / (1.0 + np.exp(-(np.log1p(amount) - 5.0)))
        return pd.DataFrame({"prediction": (probability >= 0.5).astype("int64"), "probability": probability})


THRESHOLD_PARAMS: dict[str, Any] = {"threshold": 0.5}  # ``infer_signature(..., params=...)``: a double


class ThresholdModel(GuardedModel):
    """``prediction`` is 1 where the probability reaches the ``threshold`` param (0.5 unless sent)."""

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        out = super().predict(context, model_input, params)
        threshold = float((params or {}).get("threshold", THRESHOLD_PARAMS["threshold"]))
        return out.assign(prediction=(out["probability"] >= threshold).astype("int64"))


SLOW_PARAMS: dict[str, Any] = {"sleep_s": 0.0}


class SlowModel(GuardedModel):
    """Sleeps ``sleep_s`` seconds (a param, 0 unless sent) before scoring: keeps its scorer busy."""

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        threading.Event().wait(float((params or {}).get("sleep_s", 0.0)))
        return super().predict(context, model_input, params)


class StallingModel(GuardedModel):
    """Never returns for a record whose ``amount`` is -7 (a model call that hangs)."""

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        if (model_input["amount"].astype(float) == -7).any():
            threading.Event().wait()
        return super().predict(context, model_input, params)


class CrashingModel(GuardedModel):
    """Kills its process (as a segfault in native code would) for a record whose ``amount`` is -9."""

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        if (model_input["amount"].astype(float) == -9).any():
            os.kill(os.getpid(), signal.SIGKILL)
        return super().predict(context, model_input, params)


class DeviceReportingModel(PythonModel):
    """A pyfunc told its device through ``model_config`` (log it with ``model_config={"device":
    None}``): ``device`` is what it was told, ``cuda_visible`` its process's
    ``CUDA_VISIBLE_DEVICES`` ("unset" when not set), beside a ``prediction`` of 1 per row."""

    device = "not loaded"

    def load_context(self, context: Any) -> None:
        self.device = str((context.model_config or {}).get("device"))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        rows = len(model_input)
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
        return pd.DataFrame(
            {"prediction": [1] * rows, "device": [self.device] * rows, "cuda_visible": [visible] * rows}
        )
