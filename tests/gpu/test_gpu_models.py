"""The GPU path on a real CUDA device: a small torch model and a small transformers pipeline,
logged to a real registry, loaded for a GPU served entity (placed on ``cuda``) and for a CPU one
(kept on the CPU), scored through the core, the device logged with each record.

Selected only where CUDA is visible (tests/conftest.py deselects the ``gpu`` marker elsewhere);
needs the ``gpu`` extra (``pip install -e '.[dev,gpu]'``). Run: ``pytest -m gpu tests/gpu``.
Everything is built locally (no model hub): the device machines reach no network.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from lakeserve.features.lookup import InMemoryFeatureLookup
from lakeserve.scoring.core import ScoringCore
from lakeserve.scoring.models import MlflowServedModel
from lakeserve.scoring.records import Origin, ScoringRequest
from lakeserve.scoring.settings import EndpointSettings, MlflowSettings, Route, ServedEntity, TrafficConfig

pytestmark = pytest.mark.gpu

TORCH_MODEL, PIPELINE = "gpu_torch_test", "gpu_pipeline_test"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowSettings]:
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        yield _register(tmp_path_factory.mktemp("mlflow"))


def _register(tmp_path: Path) -> MlflowSettings:
    import mlflow
    import torch  # pyright: ignore[reportMissingImports]  # the gpu extra
    from mlflow.models import infer_signature

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    experiment = client.create_experiment("gpu-test", artifact_location=(tmp_path / "artifacts").as_uri())
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    x = pd.DataFrame({"amount": np.linspace(0, 1, 8, dtype=np.float32), "avg_amount": np.ones(8, np.float32)})
    y = net(torch.tensor(x.to_numpy())).detach().numpy()
    with mlflow.start_run(experiment_id=experiment):
        mlflow.pytorch.log_model(net, name="model", signature=infer_signature(x, y), registered_model_name=TORCH_MODEL)
    with mlflow.start_run(experiment_id=experiment):
        mlflow.transformers.log_model(_tiny_pipeline(), name="model", registered_model_name=PIPELINE)
    mlflow.set_tracking_uri(None)  # the models must load through the settings, not a global
    mlflow.set_registry_uri(None)
    return MlflowSettings(tracking_uri=uri, registry_uri=uri)


def _tiny_pipeline() -> Any:
    """A text-classification pipeline over a one-layer BERT with random weights and a word-level
    tokenizer, built in memory."""
    from tokenizers import Tokenizer, models, pre_tokenizers  # pyright: ignore[reportMissingImports]
    from transformers import (  # pyright: ignore[reportMissingImports]
        BertConfig,
        BertForSequenceClassification,
        PreTrainedTokenizerFast,
        pipeline,
    )

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "good": 4, "bad": 5}
    words = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=words, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]"
    )
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=32,
    )  # fmt: skip
    return pipeline("text-classification", model=BertForSequenceClassification(config), tokenizer=tokenizer)


def served(model: str, workload_type: str) -> ServedEntity:
    return ServedEntity(name="scorer", entity_name=model, entity_version="1", workload_type=workload_type)  # type: ignore[arg-type]


def _weights_device(model: MlflowServedModel) -> str:
    raw = model._model.get_raw_model()  # type: ignore[union-attr]  # the torch module MLflow loaded
    return str(next(raw.parameters()).device.type)


def test_a_torch_model_is_placed_on_its_entitys_device_and_scores_alike(registry: MlflowSettings) -> None:
    gpu = MlflowServedModel.load(served(TORCH_MODEL, "GPU_SMALL"), registry)
    cpu = MlflowServedModel.load(served(TORCH_MODEL, "CPU"), registry)
    assert (gpu.device, _weights_device(gpu)) == ("cuda", "cuda")
    assert (cpu.device, _weights_device(cpu)) == ("cpu", "cpu")
    frame = pd.DataFrame({"amount": np.float32([0.1, 0.9]), "avg_amount": np.float32([1.0, 1.0])})
    on_gpu = gpu.predict(frame)["prediction"].to_numpy(dtype=float)
    on_cpu = cpu.predict(frame)["prediction"].to_numpy(dtype=float)
    np.testing.assert_allclose(on_gpu, on_cpu, rtol=1e-4, atol=1e-5)
    endpoint = EndpointSettings(
        served_entities=[served(TORCH_MODEL, "GPU_SMALL")],
        traffic_config=TrafficConfig(routes=[Route(served_model_name="scorer", traffic_percentage=100)]),
    )
    core = ScoringCore(endpoint, {"scorer": gpu}, InMemoryFeatureLookup({}))
    body = json.dumps({"dataframe_records": [{"amount": 0.1, "avg_amount": 1.0}]}).encode()
    [result] = core.score([ScoringRequest("r1", body, datetime.now(UTC), Origin("http", None, None, None))])
    assert [(r.status_code, r.device) for r in result.records] == [(200, "cuda")]
    np.testing.assert_allclose(float(result.records[0].prediction), on_cpu[0], rtol=1e-4, atol=1e-5)
    gpu.unload()
    cpu.unload()


def test_a_transformers_pipeline_is_built_on_its_entitys_device(registry: MlflowSettings) -> None:
    gpu = MlflowServedModel.load(served(PIPELINE, "GPU_SMALL"), registry)
    cpu = MlflowServedModel.load(served(PIPELINE, "CPU"), registry)
    assert (gpu.device, gpu._model.get_raw_model().device.type) == ("cuda", "cuda")  # type: ignore[union-attr]
    assert (cpu.device, cpu._model.get_raw_model().device.type) == ("cpu", "cpu")  # type: ignore[union-attr]
    texts = pd.DataFrame({"inputs": ["good good", "bad"]})
    assert len(gpu.predict(texts)) == len(cpu.predict(texts)) == 2
    gpu.unload()
    cpu.unload()
