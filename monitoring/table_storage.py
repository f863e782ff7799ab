"""Where a table can live: the schemes both writers of lakeserve's tables understand.

The service writes through delta-rs and the jobs through Spark, so a table root must be a location
both read: a local path (or ``file://``), ``s3://`` / ``s3a://`` (S3 and S3-compatible stores),
``gs://``, or ``abfss://container@account.dfs.core.windows.net/...``. How each scheme's
``tables.storage_options`` reach Spark is :mod:`lakeserve.jobs.spark_storage`'s.
"""

from __future__ import annotations

from typing import Literal

Scheme = Literal["local", "s3", "gs", "abfss"]

_SCHEMES: dict[str, Scheme] = {"file": "local", "s3": "s3", "s3a": "s3", "gs": "gs", "abfss": "abfss"}


def table_scheme(uri: str) -> Scheme:
    """The storage a table location is on; ValueError for a scheme one of the writers lacks."""
    if "://" not in uri:
        return "local"
    scheme = uri.split("://", 1)[0].lower()
    if scheme not in _SCHEMES:
        known = ", ".join(f"{s}://" for s in _SCHEMES)
        raise ValueError(f"{scheme}:// is not a table location both delta-rs and Spark read; use a path or {known}")
    return _SCHEMES[scheme]


def bucket_of(uri: str) -> str:
    """The bucket (or ``container@account...`` host) of an object-store location."""
    return uri.split("://", 1)[1].split("/", 1)[0]
