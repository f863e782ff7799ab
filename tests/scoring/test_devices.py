"""A served entity's device, from its workload type: how each flavor is placed, a pyfunc told its
device through ``model_config`` (loaded from a real registry), the device logged with each
record, GPUs hidden from a CPU-only process, and a GPU entity refused where no CUDA device is
visible. The GPU itself is exercised by tests/gpu (run where CUDA exists)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from lakeserve.errors import ConfigError
from lakeserve.features.lookup import InMemoryFeatureLookup
from lakeserve.monitoring.inference_rows import to_arrow
from lakeserve.monitoring.table_schema import inference_schema
from lakeserve.scoring.core import ScoringCore
from lakeserve.scoring.devices import (
    CUDA_VISIBLE_DEVICES,
    PREDICTION_DEVICE,
    USE_DEVICE_MAP,
    cuda_device_count,
    hide_gpus_unless_needed,
    placed,
    placement,
)
from lakeserve.scoring.models import MlflowServedModel
from lakeserve.scoring.records import Origin, ScoringRequest
from lakeserve.scoring.settings import EndpointSettings, MlflowSettings, Route, ServedEntity, TrafficConfig
from lakeserve.scoring.testing_models import DeviceReportingModel, GuardedModel

TOLD, UNTOLD = "device_told_test", "device_untold_test"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowSettings]:
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        yield _register_models(tmp_path_factory.mktemp("mlflow"))


def _register_models(tmp_path: Path) -> MlflowSettings:
    """``DeviceReportingModel`` logged with a ``device`` key in its model_config, and a pyfunc
    (``GuardedModel``) logged without one."""
    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    experiment = client.create_experiment("devices-test", artifact_location=(tmp_path / "artifacts").as_uri())
    for name, model, config in [(TOLD, DeviceReportingModel(), {"device": None}), (UNTOLD, GuardedModel(), None)]:
        with mlflow.start_run(experiment_id=experiment):
            mlflow.pyfunc.log_model(name="model", python_model=model, model_config=config, registered_model_name=name)
    mlflow.set_tracking_uri(None)  # the models must load through the settings, not a global
    mlflow.set_registry_uri(None)
    return MlflowSettings(tracking_uri=uri, registry_uri=uri)


def entity(model: str, workload_type: str = "CPU") -> ServedEntity:
    return ServedEntity(name="scorer", entity_name=model, entity_version="1", workload_type=workload_type)  # type: ignore[arg-type]


def test_each_flavor_is_placed_on_its_entitys_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(USE_DEVICE_MAP, raising=False)
    cpu, gpu = entity(TOLD), entity(TOLD, "GPU_SMALL")
    assert placement(gpu, "mlflow.pytorch", {"device": None}).model_config == {"device": "cuda"}
    assert placement(cpu, "mlflow.pytorch", {"device": None}).model_config == {"device": "cpu"}
    # transformers: the pipeline is built on the device while the variable is set, not told at call time
    assert placement(gpu, "mlflow.transformers", {}).env == {PREDICTION_DEVICE: "0"}
    assert placement(cpu, "mlflow.transformers", {}).env == {PREDICTION_DEVICE: "-1"}
    assert placement(cpu, "mlflow.transformers", {}).model_config is None
    assert placement(gpu, "mlflow.pyfunc.model", {"device": None}).model_config == {"device": "cuda"}
    # a pyfunc that declares no device key, and sklearn, run where they are: on the CPU
    assert placement(cpu, "mlflow.pyfunc.model", None).device == "cpu"
    assert placement(cpu, "mlflow.sklearn", None).model_config is None
    for loader, config in [("mlflow.sklearn", None), ("mlflow.pyfunc.model", None)]:
        with pytest.raises(ConfigError, match=r"served entity 'scorer' asks for GPU \(GPU_SMALL\) but its model"):
            placement(gpu, loader, config)


def test_a_device_map_places_gpu_entities_and_refuses_cpu_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(USE_DEVICE_MAP, "true")
    assert placement(entity(TOLD, "GPU_MEDIUM"), "mlflow.transformers", {}).env == {}
    with pytest.raises(ConfigError, match=f"CPU entity but {USE_DEVICE_MAP}"):
        placement(entity(TOLD), "mlflow.transformers", {})


def test_a_placements_environment_is_set_while_it_loads_then_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PREDICTION_DEVICE, "7")
    with placed(placement(entity(TOLD), "mlflow.transformers", {})):
        assert os.environ[PREDICTION_DEVICE] == "-1"
    assert os.environ[PREDICTION_DEVICE] == "7"


def test_gpus_are_hidden_only_from_a_cpu_only_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CUDA_VISIBLE_DEVICES, raising=False)
    assert not hide_gpus_unless_needed([entity(TOLD), entity(TOLD, "GPU")])
    assert CUDA_VISIBLE_DEVICES not in os.environ
    assert hide_gpus_unless_needed([entity(TOLD)])
    assert os.environ[CUDA_VISIBLE_DEVICES] == ""
    assert cuda_device_count() == 0
    monkeypatch.setenv(CUDA_VISIBLE_DEVICES, "1")  # what the operator set stays
    assert not hide_gpus_unless_needed([entity(TOLD)])
    assert os.environ[CUDA_VISIBLE_DEVICES] == "1"


def test_a_pyfunc_is_told_its_device_and_each_record_logs_it(registry: MlflowSettings) -> None:
    model = MlflowServedModel.load(entity(TOLD), registry)
    assert model.device == "cpu"
    out = model.predict(pd.DataFrame({"amount": [1.0, 2.0]}))
    assert out["device"].tolist() == ["cpu", "cpu"]  # what its model_config said
    endpoint = EndpointSettings(
        served_entities=[entity(TOLD)],
        traffic_config=TrafficConfig(routes=[Route(served_model_name="scorer", traffic_percentage=100)]),
    )
    core = ScoringCore(endpoint, {"scorer": model}, InMemoryFeatureLookup({}))
    body = json.dumps({"dataframe_records": [{"amount": 1.0}]}).encode()
    [result] = core.score([ScoringRequest("r1", body, datetime.now(UTC), Origin("kafka", "in", 0, 1))])
    assert [r.device for r in result.records] == ["cpu"]
    schema = inference_schema({"amount": pa.float64()}, {"prediction": pa.int64()})
    table = to_arrow([result], schema, "ep", sampling_fraction=1.0, payload_cap_bytes=1 << 20)
    assert dict(table.column("request_metadata")[0].as_py())["device"] == "cpu"
    model.unload()


def test_a_gpu_entity_is_refused_where_no_cuda_device_is_visible(
    registry: MlflowSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CUDA_VISIBLE_DEVICES, "")  # on every machine, GPU or not
    with pytest.raises(ConfigError, match=r"asks for GPU \(GPU_SMALL\) but no CUDA device is visible: .*hides them"):
        MlflowServedModel.load(entity(TOLD, "GPU_SMALL"), registry)

