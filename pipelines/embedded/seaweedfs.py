"""SeaweedFS as a loopback S3-compatible object store, built from its Go module on first use.

The object-store tests (and anyone who wants S3 on a laptop) need a real store that honours
conditional writes: delta-rs commits a table version with ``If-None-Match: *``, which is what
makes many writers of one table safe. SeaweedFS does (Apache-2.0; MinIO is AGPL). It is built,
like Kafka's jars are resolved, by the project itself: ``go mod download`` of one pinned version
from the Go module proxy, ``go build ./weed`` in a copy (``go install`` refuses the module for its
``replace`` directives), into ``<cache_dir>/seaweedfs/<version>/weed``, once. One ``weed server``
runs the master, a volume server, the filer and the S3 gateway, every port on 127.0.0.1 chosen
free, its data in the state folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pyarrow import fs

from lakeserve.errors import ComponentError
from lakeserve.pipelines.embedded.ports import free_ports
from lakeserve.pipelines.embedded.prereqs import require_go
from lakeserve.pipelines.embedded.process import ManagedProcess

MODULE = "github.com/seaweedfs/seaweedfs"
VERSION = "v0.0.0-20261109003541-7506e5f91cd6"  # SeaweedFS 4.53 as the module proxy serves it
REGION = "us-east-1"
READY_BUCKET = "lakeserve-ready"  # where the readiness check writes
BUILD_TIMEOUT_S = 1800  # about 4.5 minutes on two cores with an empty Go build cache


class SeaweedS3:
    """``weed server -s3`` on loopback: an S3 endpoint with one identity (``access_key``)."""

    def __init__(self, port: int, state_dir: Path, cache_dir: Path, access_key: str, secret_key: str) -> None:
        self.port = port
        self.cache_dir = cache_dir
        self.access_key, self.secret_key = access_key, secret_key
        self.process = ManagedProcess("seaweedfs", state_dir / "seaweedfs")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def storage_options(self) -> dict[str, str]:
        """delta-rs storage options for this store (also ``tables.storage_options``)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": REGION,
            "AWS_ALLOW_HTTP": "true",
            "aws_conditional_put": "etag",
        }

    def start(self, timeout_s: float = 120.0) -> None:
        weed = ensure_binary(self.cache_dir)
        work = self.process.workdir
        (work / "data").mkdir(parents=True, exist_ok=True)
        identities = {"identities": [{
            "name": "lakeserve",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}  # fmt: skip
        config = work / "s3.json"
        config.write_text(json.dumps(identities))
        config.chmod(0o600)
        master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3_grpc = free_ports(7)
        # Volumes are not preallocated: 256 of 64 MB cost nothing until written, and each bucket
        # takes 7 (32 ran out at the sixth bucket). No pre-stop wait, no telemetry, its unix
        # sockets in the state folder, its log in the process's output file only.
        argv = [
            str(weed), "-logtostderr", "server",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={work / 'data'}",
            f"-master.port={master}", f"-master.port.grpc={master_grpc}", "-master.volumeSizeLimitMB=64",
            "-master.telemetry=false",
            f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}", "-volume.max=256",
            "-volume.preStopSeconds=0",
            "-filer", f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
            *_socket("filer", work),
            "-s3", f"-s3.port={self.port}", f"-s3.port.grpc={s3_grpc}", f"-s3.config={config}",
            *_socket("s3", work), "-s3.port.iceberg=0", "-s3.port.lance=0",
        ]  # fmt: skip
        self.process.start(argv)
        self.process.wait_ready(self._writes, timeout_s, f"storing objects on {self.endpoint}")

    def stop(self) -> bool:
        return self.process.stop()

    def create_bucket(self, name: str) -> None:
        try:
            self._client(allow_bucket_creation=True).create_dir(name)
        except OSError as exc:
            raise ComponentError("seaweedfs", f"could not create bucket {name}: {exc}") from exc

    def _client(self, **options: bool) -> fs.S3FileSystem:
        return fs.S3FileSystem(
            access_key=self.access_key, secret_key=self.secret_key, region=REGION,
            endpoint_override=f"127.0.0.1:{self.port}", scheme="http", connect_timeout=2, request_timeout=5,
            **options,
        )  # fmt: skip

    def _writes(self) -> bool:
        """An object is stored and read back in a bucket of its own: the gateway, the filer, the
        credentials and a writable volume all work (a fresh master hands out volumes only after
        two heartbeats, ~10 s; a check of ListBuckets alone would pass before that)."""
        probe = f"{READY_BUCKET}/ready"
        try:
            client = self._client(allow_bucket_creation=True)
            client.create_dir(READY_BUCKET)
            with client.open_output_stream(probe) as out:
                out.write(b"ready")
            with client.open_input_stream(probe) as stream:
                return bytes(stream.read()) == b"ready"
        except OSError:
            return False


def ensure_binary(cache_dir: Path, *, background: bool = False) -> Path:
    """``<cache_dir>/seaweedfs/<VERSION>/weed``, built from the module proxy when absent;
    ``background``: the compiler runs at the lowest CPU priority (a build that overlaps other work)."""
    target = cache_dir / "seaweedfs" / VERSION / "weed"
    if target.exists():
        return target
    go = require_go()
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target.parent / ".build.lock"):  # another process may be building it right now
        if target.exists():
            return target
        with tempfile.TemporaryDirectory(prefix="weed-build-", dir=target.parent) as tmp:
            source = _download(go, Path(tmp))
            built = Path(tmp) / "weed"
            _go(go, ["build", "-o", str(built), "./weed"], source, nice=background)
            os.replace(built, target)
    return target


def _download(go: str, tmp: Path) -> Path:
    """The module's source, copied out of the (read-only) module cache into ``tmp``."""
    out = _go(go, ["mod", "download", "-json", f"{MODULE}@{VERSION}"], tmp)
    try:
        module_dir = Path(json.loads(out)["Dir"])
    except (ValueError, KeyError) as exc:
        raise ComponentError("seaweedfs", f"go mod download gave no source folder: {out[-500:]}") from exc
    source = tmp / "src"
    shutil.copytree(module_dir, source)
    for path in [source, *source.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | 0o200)
    return source


def _go(go: str, args: list[str], cwd: Path, *, nice: bool = False) -> str:
    env = {**os.environ, "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local", "CGO_ENABLED": "0"}
    try:
        niced = ["nice", "-n", "19"] if nice and shutil.which("nice") else []
        result = subprocess.run([*niced, go, *args], cwd=cwd, env=env, capture_output=True, text=True,
                                timeout=BUILD_TIMEOUT_S, check=False)  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise ComponentError("seaweedfs", f"go {args[0]} took over {BUILD_TIMEOUT_S} s") from exc
    if result.returncode != 0:
        raise ComponentError("seaweedfs", f"go {' '.join(args)} failed:\n{(result.stdout + result.stderr)[-2000:]}")
    return result.stdout


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _socket(server: str, folder: Path) -> list[str]:
    """``-<server>.localSocket`` in ``folder`` (else SeaweedFS leaves one per port in /tmp), when
    the path fits a unix socket's 108 bytes."""
    path = folder / f"{server}.sock"
    return [f"-{server}.localSocket={path}"] if len(str(path)) < 100 else []
