"""The jobs' readable reports (Evidently's HTML and JSON, the A/B Markdown), written beside their
tables: on the local disk, or on the object store the tables are on, with the same storage options.

delta-rs and Spark reach the tables; a report is one small file, so pyarrow's filesystems write it
(S3 and S3-compatible stores from ``tables.storage_options``, GCS and Azure with their own options or
default credentials), and a local location stays a plain file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pyarrow import fs

from lakeserve.errors import ComponentError
from lakeserve.monitoring.table_storage import table_scheme


class ReportFiles:
    """Writes and reads report files at table-like locations (paths or URIs)."""

    def __init__(self, storage_options: Mapping[str, str] | None = None) -> None:
        self._options = {k.upper(): v for k, v in (storage_options or {}).items()}

    def write_text(self, location: str, text: str) -> str:
        """Write ``text`` (UTF-8) at ``location``, creating what holds it; returns the location."""
        scheme = table_scheme(location)
        if scheme == "local":
            path = Path(location.removeprefix("file://").removeprefix("file:"))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            return str(path)
        filesystem, key = self._filesystem(location, scheme)
        try:
            with filesystem.open_output_stream(key) as out:
                out.write(text.encode("utf-8"))
        except OSError as exc:
            raise ComponentError("storage", f"could not write the report {location}: {exc}") from exc
        return location

    def read_text(self, location: str) -> str:
        """The UTF-8 text at ``location`` (a path or a location on the tables' store)."""
        scheme = table_scheme(location)
        if scheme == "local":
            return Path(location.removeprefix("file://").removeprefix("file:")).read_text(encoding="utf-8")
        filesystem, key = self._filesystem(location, scheme)
        try:
            with filesystem.open_input_stream(key) as stream:
                return bytes(stream.read()).decode("utf-8")
        except OSError as exc:
            raise ComponentError("storage", f"could not read the report {location}: {exc}") from exc

    def _filesystem(self, location: str, scheme: str) -> tuple[fs.FileSystem, str]:
        rest = location.split("://", 1)[1]
        if scheme == "s3":
            return self._s3(), rest
        if scheme == "abfss" and "AZURE_STORAGE_ACCOUNT_KEY" in self._options:
            container, _, path = rest.partition("/")
            account = container.split("@", 1)[1].split(".", 1)[0]
            azure = fs.AzureFileSystem(account_name=account, account_key=self._options["AZURE_STORAGE_ACCOUNT_KEY"])
            return azure, f"{container.split('@', 1)[0]}/{path}"
        filesystem, path = fs.FileSystem.from_uri(location)
        return filesystem, path

    def _s3(self) -> fs.S3FileSystem:
        o = self._options
        endpoint = o.get("AWS_ENDPOINT_URL") or o.get("AWS_ENDPOINT")
        scheme, host = (endpoint.split("://", 1) if endpoint and "://" in endpoint else ("https", endpoint))
        return fs.S3FileSystem(
            access_key=o.get("AWS_ACCESS_KEY_ID"),
            secret_key=o.get("AWS_SECRET_ACCESS_KEY"),
            session_token=o.get("AWS_SESSION_TOKEN"),
            region=o.get("AWS_REGION") or o.get("AWS_DEFAULT_REGION"),
            endpoint_override=host,
            scheme=scheme,
            force_virtual_addressing=o.get("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "").lower() == "true",
        )
