"""Zero-downtime updates: under load, a new traffic split is loaded in the background and
swapped between micro-batches with no failed request; a version that cannot load is refused
and the old config keeps serving."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest_helpers import answers_for, produce, running, settings_for

from lakeserve.jobs.demo_data import request_bodies
from lakeserve.pipelines.updates import EndpointUpdater, read_status
from lakeserve.scoring.models import resolve_version
from lakeserve.scoring.settings import ServedEntity
from lakeserve.scoring.testing import FakeServedModel
from lakeserve.settings import Settings


def endpoint_file(tmp_path: Path, settings: Settings, **changes: object) -> Path:
    data = settings.endpoint.model_dump(mode="json")
    data.update(changes)
    path = tmp_path / "endpoint.yaml"
    path.write_text(yaml.safe_dump({"endpoint": data}))
    return path


def cli(config_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lakeserve.cli", "--config", str(config_file), *args],
        capture_output=True,
        text=True,
        timeout=180,
    )


def wait_status(settings: Settings, state: str, since: float, timeout_s: float = 90) -> dict[str, object]:
    """The update status written by this process's worker (the file is the endpoint's, shared by every
    process serving it) once it reads ``state``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = read_status(settings.stack.state_dir, settings.endpoint.name)
        mine = status is not None and status["pid"] == os.getpid()
        if status and mine and status["state"] == state and float(str(status["at_epoch"])) >= since:
            return status
        threading.Event().wait(0.1)
    last = read_status(settings.stack.state_dir, settings.endpoint.name)
    pytest.fail(f"no {state!r} update status within {timeout_s} s: {last}")


class PacedProducer(threading.Thread):
    """Produces the bodies at a steady pace until they run out, remembering when each was sent."""

    def __init__(self, settings: Settings, bodies: list[bytes], per_second: float) -> None:
        super().__init__(daemon=True)
        self.settings, self.bodies, self.interval = settings, bodies, 1.0 / per_second
        self.sent_at: list[float] = []

    def run(self) -> None:
        pace = threading.Event()
        for i, body in enumerate(self.bodies):
            self.sent_at.append(time.time())  # before producing: a later time could postdate the swap
            produce(self.settings, [body], [str(i).encode()])
            pace.wait(self.interval)  # pacing the load, not waiting for readiness


def test_traffic_update_under_load_swaps_without_failures(
    stack: Settings, demo_assets, config_file: Path, tmp_path: Path
) -> None:
    settings = settings_for(stack, "hot-swap")
    customers = pd.read_parquet(demo_assets.data_dir / "customers.parquet")
    bodies = request_bodies(customers, 240, seed=31)
    new = endpoint_file(
        tmp_path,
        settings,
        traffic_config={
            "routes": [
                {"served_model_name": "champion", "traffic_percentage": 0},
                {"served_model_name": "challenger", "traffic_percentage": 100},
            ]
        },
    )
    with running(settings) as worker:
        watcher = threading.Thread(target=worker.updater.watch, args=(threading.Event(),), daemon=True)
        watcher.start()
        producer = PacedProducer(settings, bodies, per_second=40)
        producer.start()
        answers_for(settings, 40)  # load is flowing
        published = time.time()
        done = cli(config_file, "endpoint", "update", str(new))
        assert done.returncode == 0, done.stderr
        status = wait_status(settings, "applied", published)
        applied_at = time.time()
        producer.join(timeout=120)
        answers = answers_for(settings, len(bodies))
        worker.loop.flush()

    assert status["serving"] == {"champion": "card_fraud/1", "challenger": "card_fraud/2"}
    assert {a.headers["status"] for a in answers.values()} == {"200"}  # no failed request
    by_index = {int(a.key.decode()): a.headers["served-model-name"] for a in answers.values()}
    before = {by_index[i] for i, t in enumerate(producer.sent_at) if t < published}
    after = {by_index[i] for i, t in enumerate(producer.sent_at) if t > applied_at}
    assert before == {"champion", "challenger"}
    assert after == {"challenger"}


def test_update_that_cannot_load_keeps_the_old_config(
    stack: Settings, demo_assets, config_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no CUDA device for this worker, on any machine
    settings = settings_for(stack, "bad-update")
    customers = pd.read_parquet(demo_assets.data_dir / "customers.parquet")
    entities = settings.endpoint.model_dump(mode="json")["served_entities"]
    entities[1]["workload_type"] = "GPU_SMALL"  # no CUDA device visible: the load fails
    new = endpoint_file(tmp_path, settings, served_entities=entities)
    with running(settings) as worker:
        published = time.time()
        done = cli(config_file, "endpoint", "update", str(new))
        assert done.returncode == 0, done.stderr
        worker.updater.check()
        status = wait_status(settings, "failed", published)
        produce(settings, request_bodies(customers, 30, seed=5))
        answers = answers_for(settings, 30)
    assert "no CUDA device" in str(status["error"])
    assert {a.headers["status"] for a in answers.values()} == {"200"}
    assert {a.headers["served-model-name"] for a in answers.values()} == {"champion", "challenger"}
    assert worker.core.table.endpoint == settings.endpoint  # the old config still serves


def test_bad_endpoint_file_is_refused_by_the_cli(config_file: Path, tmp_path: Path, stack: Settings) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {
                "endpoint": {
                    "name": "fraud-detection",
                    "traffic_config": {"routes": [{"served_model_name": "champion", "traffic_percentage": 60}]},
                }
            }
        )
    )
    done = cli(config_file, "endpoint", "update", str(bad))
    assert done.returncode == 2
    assert "traffic_config: traffic percentages must sum to 100, got 60" in done.stderr


def test_alias_moved_in_the_registry_is_followed(stack: Settings, demo_assets) -> None:
    """The watcher's registry poll sees the moved alias, loads that version and the loop swaps it
    in before its next micro-batch (swaps under Kafka load: the traffic-update test above)."""
    import mlflow

    from lakeserve.pipelines.worker import build_worker

    settings = settings_for(stack, "alias-move")
    client = mlflow.MlflowClient(tracking_uri=settings.mlflow.tracking_uri, registry_uri=settings.mlflow.registry_uri)
    champion = client.get_model_version_by_alias("card_fraud", "champion").version
    challenger = client.get_model_version_by_alias("card_fraud", "challenger").version
    worker = build_worker(settings)
    try:
        assert worker.updater.check() is None  # nothing moved yet
        client.set_registered_model_alias("card_fraud", "challenger", str(champion))
        published = time.time()
        assert worker.updater.check() is not None  # the watcher's poll, run now
        worker.loop.before_batch()  # what the loop runs between micro-batches
        status = wait_status(settings, "applied", published)
    finally:
        client.set_registered_model_alias("card_fraud", "challenger", str(challenger))
        worker.loop.source.close()
        worker.loop.sink.close()
    assert status["serving"] == {"champion": f"card_fraud/{champion}", "challenger": f"card_fraud/{champion}"}
    assert worker.core.table.models["challenger"].model_version == str(champion)


def test_a_moved_alias_is_loaded_once_and_a_superseded_load_unloaded(
    stack: Settings, demo_assets, tmp_path: Path
) -> None:
    """An idle service never takes the prepared update: the poll must not load the same move
    again at every interval, and a pending load that a newer move replaces must be unloaded.
    The registry is the real one; the models are fakes that record their unloading."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=stack.mlflow.tracking_uri, registry_uri=stack.mlflow.registry_uri)
    champion = client.get_model_version_by_alias("card_fraud", "champion").version
    challenger = client.get_model_version_by_alias("card_fraud", "challenger").version
    assert champion != challenger
    loads: list[FakeServedModel] = []

    def fake(entity: ServedEntity) -> FakeServedModel:
        return FakeServedModel(entity.name, lambda f: f.iloc[:, 0], "card_fraud", resolve_version(entity, stack.mlflow))

    def loader(entity: ServedEntity) -> FakeServedModel:
        loads.append(fake(entity))
        return loads[-1]

    endpoint = stack.endpoint
    serving = {e.name: fake(e) for e in endpoint.served_entities}
    updater = EndpointUpdater(endpoint, serving, tmp_path, stack.mlflow, loader)
    try:
        client.set_registered_model_alias("card_fraud", "challenger", str(champion))
        first = updater.check()
        assert first is not None
        assert [m.model_version for m in loads] == [str(champion)]  # only the moved entity loads
        assert first.models["champion"] is serving["champion"]
        for _ in range(3):  # idle: nobody takes the update; the polls see nothing new to load
            assert updater.check() is None
        assert len(loads) == 1

        client.set_registered_model_alias("card_fraud", "challenger", str(challenger))  # moved back, not swapped yet
        second = updater.check()
        assert second is not None
        assert loads[0].unloaded  # the superseded load, never swapped in, is released
        assert second.models["challenger"] is serving["challenger"]  # the version already served is reused
        assert len(loads) == 1
        assert updater.take_pending() is second
        updater.applied(second, serving)
        assert not any(m.unloaded for m in serving.values())  # still in use
    finally:
        client.set_registered_model_alias("card_fraud", "challenger", str(challenger))
