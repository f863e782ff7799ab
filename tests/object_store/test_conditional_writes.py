"""The store's conditional writes, which delta-rs' concurrent commits rest on: of racing creates
of one key exactly one wins, and a Delta commit on a stale version is refused, never written over."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import boto3  # type: ignore[import-untyped]
import pyarrow as pa
import pytest
from botocore.config import Config  # type: ignore[import-untyped]
from botocore.exceptions import ClientError  # type: ignore[import-untyped]
from deltalake import CommitProperties, DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError
from store_helpers import ACCESS_KEY, BUCKET, SECRET_KEY

from lakeserve.pipelines.embedded.seaweedfs import SeaweedS3

APPENDS, ROWS = 2, 10
RACERS, KEYS = 4, 10  # each round of racers takes ~0.6 s: the store serialises them on a lock
SCHEMA = pa.schema([("id", pa.int64()), ("writer", pa.int64())])


def rows(writer: int, append: int) -> pa.Table:
    """ROWS rows whose ids say who wrote them in which append: unique across the whole test."""
    first = (writer * APPENDS + append) * ROWS
    return pa.table({"id": range(first, first + ROWS), "writer": [writer] * ROWS}, schema=SCHEMA)


def test_of_racing_creates_of_one_key_exactly_one_wins(object_store: SeaweedS3) -> None:
    """``PUT`` with ``If-None-Match: *`` from RACERS threads at once, for each of KEYS keys: one
    answer 200 and its body is kept, every other one 412 (the check and the write are one step)."""
    s3 = boto3.client("s3", endpoint_url=object_store.endpoint, aws_access_key_id=ACCESS_KEY,
                      aws_secret_access_key=SECRET_KEY, region_name="us-east-1",
                      config=Config(max_pool_connections=RACERS, retries={"max_attempts": 1}))  # fmt: skip
    barrier = threading.Barrier(RACERS)

    def create(key: str, racer: int) -> int:
        barrier.wait(30)
        try:
            s3.put_object(Bucket=BUCKET, Key=key, Body=str(racer).encode(), IfNoneMatch="*")
        except ClientError as refused:
            return int(refused.response["ResponseMetadata"]["HTTPStatusCode"])
        return 200

    with ThreadPoolExecutor(RACERS) as pool:
        for k in range(KEYS):
            key = f"conditional/races/{k}"
            statuses = list(pool.map(lambda racer, key=key: create(key, racer), range(RACERS)))
            assert sorted(statuses) == [200] + [412] * (RACERS - 1), (key, statuses)
            assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == str(statuses.index(200)).encode()


def test_a_commit_on_a_stale_version_is_refused_not_written_over(object_store: SeaweedS3) -> None:
    """Two handles at version 0; the first commits version 1; the second's commit of version 1
    fails when it may not retry, and lands as version 2 when it may: nothing is written over."""
    uri, options = f"s3://{BUCKET}/conditional/stale", object_store.storage_options()
    write_deltalake(uri, rows(0, 0), storage_options=options)
    first, second = DeltaTable(uri, storage_options=options), DeltaTable(uri, storage_options=options)
    write_deltalake(first, rows(0, 1), mode="append")
    with pytest.raises(CommitFailedError):
        write_deltalake(second, rows(1, 0), mode="append", commit_properties=CommitProperties(max_commit_retries=0))
    write_deltalake(second, rows(1, 1), mode="append")
    table = DeltaTable(uri, storage_options=options)
    assert table.version() == 2
    assert sorted(table.to_pyarrow_table()["id"].to_pylist()) == sorted(
        [*rows(0, 0)["id"].to_pylist(), *rows(0, 1)["id"].to_pylist(), *rows(1, 1)["id"].to_pylist()]
    )
