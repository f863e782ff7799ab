"""A worker process serving only CPU entities hides the GPUs from itself before any model loads,
and its model is told its device: checked from inside the model, through a real worker process
under a supervisor, on the real broker."""

from __future__ import annotations

import pytest
from conftest_helpers import answers_for, body, produce, register_model, serving, settings_for, supervised

from lakeserve.scoring.testing_models import DeviceReportingModel
from lakeserve.settings import Settings


def test_a_cpu_only_worker_hides_the_gpus_and_tells_its_model_the_cpu(
    stack: Settings, demo_assets: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)  # as a worker starts by default
    version = register_model(stack, DeviceReportingModel(), "device_reporting", model_config={"device": None})
    settings = serving(settings_for(stack, "worker-devices"), "device_reporting", version)
    with supervised(settings):
        produce(settings, [body()])
        [answer] = answers_for(settings, 1).values()
    assert answer.headers["status"] == "200"
    assert answer.body["predictions"][0] == {"prediction": 1, "device": "cpu", "cuda_visible": ""}
