"""A worker process serving only CPU entities hides the GPUs from itself before any model loads,
and its model is told its device: checked from inside the model, through a real worker process
under a supervisor, on the real broker."""

from __future__ import annotations

import threading

import pytest
from conftest_helpers import answers_for, body, produce, register_model, settings_for

from lakeserve.pipelines.supervisor import Supervisor
from lakeserve.scoring.settings import Route, ServedEntity, TrafficConfig
from lakeserve.scoring.testing_models import DeviceReportingModel
from lakeserve.settings import Settings


def test_a_cpu_only_worker_hides_the_gpus_and_tells_its_model_the_cpu(
    stack: Settings, demo_assets: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)  # as a worker starts by default
    version = register_model(stack, DeviceReportingModel(), "device_reporting", model_config={"device": None})
    base = settings_for(stack, "worker-devices")
    endpoint = base.endpoint.model_copy(update={
        "served_entities": [ServedEntity(name="reporter", entity_name="device_reporting", entity_version=version)],
        "traffic_config": TrafficConfig(routes=[Route(served_model_name="reporter", traffic_percentage=100)]),
    })  # fmt: skip
    settings = base.model_copy(update={"endpoint": endpoint})
    supervisor = Supervisor(settings, 1, restart_backoff_s=0.2)
    stopped = threading.Event()
    runner = threading.Thread(target=supervisor.run, args=(stopped,), daemon=True)
    runner.start()
    try:
        supervisor.wait_ready()
        produce(settings, [body()])
        [answer] = answers_for(settings, 1).values()
    finally:
        stopped.set()
        runner.join(timeout=60)
    assert answer.headers["status"] == "200"
    assert answer.body["predictions"][0] == {"prediction": 1, "device": "cpu", "cuda_visible": ""}
