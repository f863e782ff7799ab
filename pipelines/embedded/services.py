"""The MLflow UI and Redis as managed processes, each ready only when a real client call succeeds."""

from __future__ import annotations

import os
import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path

from lakeserve.errors import ComponentError
from lakeserve.pipelines.embedded.process import ManagedProcess
from lakeserve.scoring.settings import MlflowSettings


class MlflowUi:
    """``mlflow server`` over the same SQLite store the service and jobs use directly."""

    def __init__(self, mlflow: MlflowSettings, state_dir: Path) -> None:
        if mlflow.ui_port is None:
            raise ComponentError("mlflow", "mlflow.ui_port is null: no UI is configured")
        self.mlflow = mlflow
        self.port = mlflow.ui_port
        self.process = ManagedProcess("mlflow-ui", state_dir / "mlflow")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 120.0) -> None:
        argv = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--backend-store-uri",
            str(self.mlflow.tracking_uri),
            "--default-artifact-root",
            str(self.mlflow.artifact_root),
            "--workers",
            "1",
        ]
        self.process.start(argv, env=_env(MLFLOW_DISABLE_TELEMETRY="true"))
        self.process.wait_ready(self._healthy, timeout_s, "answering /health")

    def stop(self) -> bool:
        return self.process.stop()

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False


class RedisServer:
    """A loopback ``redis-server`` (Debian package) for the Feast Redis online store."""

    def __init__(self, port: int, state_dir: Path) -> None:
        self.port = port
        self.process = ManagedProcess("redis", state_dir / "redis")

    def start(self, timeout_s: float = 30.0) -> None:
        server = shutil.which("redis-server")
        if server is None:
            raise ComponentError("redis", "redis-server is not on PATH (Debian: apt-get install redis-server)")
        self.process.workdir.mkdir(parents=True, exist_ok=True)
        self.process.start(
            [
                server,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                str(self.process.workdir),
                "--save",
                "",
                "--appendonly",
                "no",
            ]
        )
        self.process.wait_ready(self._pings, timeout_s, "answering PING")

    def stop(self) -> bool:
        return self.process.stop()

    def _pings(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1).ping())
        except redis.RedisError:
            return False


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, **extra}
