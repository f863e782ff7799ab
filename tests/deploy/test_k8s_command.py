"""`lakeserve deploy k8s` as a user runs it, and what it refuses: a bad option or a setting no pod
could run with is a ConfigError (exit 2) naming the flag or the setting at fault."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lakeserve.cli import main
from lakeserve.errors import ConfigError
from lakeserve.k8s import K8sOptions, k8s_options, render
from lakeserve.one_host import one_host_findings
from lakeserve.settings import Settings, load_settings

ROOT = Path(__file__).parents[2]


def deploy(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lakeserve", "--config", str(config), "deploy", "k8s", *args],
        capture_output=True, text=True, timeout=120, check=False, cwd=ROOT,
    )  # fmt: skip


def test_the_command_writes_one_file_per_object(config_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "manifests"
    done = deploy(config_file, "--image", "registry.example/lakeserve:1", "--workers", "3", "--out", str(out))
    assert done.returncode == 0, done.stderr
    paths = [Path(line) for line in done.stdout.splitlines()]
    assert sorted(paths) == sorted(out.iterdir())
    objects = [yaml.safe_load(p.read_text()) for p in paths]
    assert [o["kind"] for o in objects] == [
        "ConfigMap", "Secret", "Deployment", "TriggerAuthentication", "ScaledObject", "Deployment", "Service"]
    secret_file = next(p for p, o in zip(paths, objects, strict=True) if o["kind"] == "Secret")
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    scaled = next(o for o in objects if o["kind"] == "ScaledObject")
    assert scaled["spec"]["maxReplicaCount"] == 2  # ceil(6 partitions / 3 workers)
    assert "warning" not in done.stderr  # a cluster's settings: nothing only one host can use


def test_the_command_prints_a_multi_document_stream(config_file: Path) -> None:
    done = deploy(config_file, "--image", "img", "--scaler", "hpa", "--no-rest")
    assert done.returncode == 0, done.stderr
    kinds = [doc["kind"] for doc in yaml.safe_load_all(done.stdout)]
    assert kinds == ["ConfigMap", "Secret", "Deployment", "HorizontalPodAutoscaler"]


def test_a_bad_option_is_named(config_file: Path) -> None:
    done = deploy(config_file, "--image", "img", "--max-replicas", "9")
    assert done.returncode == 2
    assert "--max-replicas 9" in done.stderr, done.stderr
    assert "kafka.partitions (6)" in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("values", "flag"),
    [
        ({"name": "Fraud_Detection"}, "--name"),
        ({"workers": 0}, "--workers"),
        ({"min_replicas": -1}, "--min-replicas"),
        ({"scaler": "vpa"}, "--scaler"),
        ({"image": "has space"}, "--image"),
        ({"env_from": ["Not_A_Secret"]}, "--env-from"),
    ],
)
def test_each_invalid_option_names_its_flag(values: dict[str, object], flag: str) -> None:
    with pytest.raises(ConfigError, match=f"  {flag}: "):
        k8s_options({"image": "img", **values})


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"workers": 7}, "--workers 7 is more than kafka.partitions (6)"),
        ({"max_replicas": 4, "workers": 2}, "--max-replicas 4"),
        ({"min_replicas": 4, "max_replicas": 3}, "--min-replicas 4"),
        ({"min_replicas": 0, "scaler": "hpa"}, "--min-replicas 0 needs --scaler keda"),
    ],
)
def test_options_the_settings_cannot_take_are_named(settings: Settings, options: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace("(", r"\(").replace(")", r"\)")):
        render(settings, K8sOptions(image="img", **options))


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"metrics": {"port": 0}}, "metrics.port"),
        ({"http": {"port": 0}}, "http.port"),
        ({"kafka": {"ssl_cafile": "relative/ca.pem"}}, "kafka.ssl_cafile"),
        ({"kafka": {"ssl_certfile": "/no/such/client.pem"}}, "kafka.ssl_certfile"),
        ({"http": {"ssl_certfile": None, "ssl_keyfile": None}}, "http: http.host 0.0.0.0 is not loopback"),
        ({"metrics": {"port": 8443}, "http": {"port": 8443, "host": "10.0.0.1"}},
         "metrics.port (8443) is also http.port"),
    ],
)
def test_settings_no_pod_could_run_with_are_named(config_file: Path, change: dict[str, object], named: str) -> None:
    settings = load_settings(config_file, overrides=change)
    with pytest.raises(ConfigError, match=named.replace("(", r"\(").replace(")", r"\)")):
        render(settings, K8sOptions(image="img"))


def test_the_cli_exits_2_naming_the_setting(
    config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = yaml.safe_load(config_file.read_text())
    config["metrics"] = {"port": 0}
    (tmp_path / "off.yaml").write_text(yaml.safe_dump(config))
    assert main(["--config", str(tmp_path / "off.yaml"), "deploy", "k8s", "--image", "img"]) == 2
    assert "metrics.port" in capsys.readouterr().err


def test_what_only_works_on_one_host_is_reported(tmp_path: Path) -> None:
    settings = load_settings(overrides={"stack": {"state_dir": str(tmp_path / "state")}})
    findings = one_host_findings(settings)
    named = sorted(line.split(":", 1)[0] for line in findings)
    assert named == ["feast.online_store", "feast.repo_path", "kafka.bootstrap_servers", "mlflow.artifact_root",
                     "mlflow.tracking_uri", "tables.root"]  # fmt: skip
    assert render(settings, K8sOptions(image="img", rest=False)).warnings == findings


def test_an_uneven_split_of_partitions_is_warned(settings: Settings) -> None:
    (warning,) = render(settings, K8sOptions(image="img", workers=4)).warnings
    assert warning.startswith("kafka.partitions (6) is not a multiple of --workers 4")
