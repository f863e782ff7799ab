"""Settings that put an endpoint's tables on the test session's object store, and a plain S3
client (pyarrow's, not delta-rs) to see what is really there."""

from __future__ import annotations

from pyarrow import fs
from pydantic import SecretStr

from lakeserve.pipelines.embedded.seaweedfs import SeaweedS3
from lakeserve.settings import Settings

BUCKET = "lake"
ACCESS_KEY, SECRET_KEY = "lakeserve-tests", "object-store-secret"


def on_store(settings: Settings, store: SeaweedS3, folder: str) -> Settings:
    """``settings`` with ``tables.root`` at ``s3://lake/<folder>`` and the store's options."""
    options = {k: SecretStr(v) for k, v in store.storage_options().items()}
    tables = settings.tables.model_copy(update={"root": f"s3://{BUCKET}/{folder}", "storage_options": options})
    return settings.model_copy(update={"tables": tables})


def _client(store: SeaweedS3) -> fs.S3FileSystem:
    host = store.endpoint.split("://", 1)[1]
    return fs.S3FileSystem(access_key=ACCESS_KEY, secret_key=SECRET_KEY, endpoint_override=host, scheme="http",
                           region="us-east-1")  # fmt: skip


def store_files(store: SeaweedS3, prefix: str) -> list[str]:
    """Every object under ``s3://lake/<prefix>``."""
    infos = _client(store).get_file_info(fs.FileSelector(f"{BUCKET}/{prefix}", recursive=True, allow_not_found=True))
    return [i.path for i in infos if i.type == fs.FileType.File]


def read_object(store: SeaweedS3, key: str) -> str:
    """The text of ``s3://lake/<key>``."""
    with _client(store).open_input_stream(f"{BUCKET}/{key}") as stream:
        return bytes(stream.read()).decode("utf-8")
