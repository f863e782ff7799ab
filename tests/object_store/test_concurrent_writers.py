"""Writers in separate processes appending to one inference table on the store at the same time:
every commit lands (the store's conditional put makes one of two racing commits lose and retry),
each process's rows are there exactly once, and each one's transaction versions are its own."""

from __future__ import annotations

import multiprocessing
from collections.abc import Mapping
from typing import Any

import pyarrow as pa
from deltalake import DeltaTable
from store_helpers import BUCKET

from lakeserve.errors import CommitConflict
from lakeserve.monitoring.delta_writer import DeltaInferenceWriter
from lakeserve.pipelines.embedded.seaweedfs import SeaweedS3

WRITERS, APPENDS, ROWS = 3, 15, 10
SCHEMA = pa.schema([("request_id", pa.string()), ("writer", pa.int64()), ("date", pa.date32())])


def _append_all(uri: str, options: Mapping[str, str], writer: int, start: Any) -> None:
    """APPENDS commits of ROWS rows, each with this writer's app id at the append's number; a lost
    commit is retried as the service's inference log does (on the table's new version)."""
    table = DeltaInferenceWriter(uri, dict(options))
    table.ensure(SCHEMA)
    start.wait(60)
    for n in range(APPENDS):
        rows = pa.table({
            "request_id": [f"w{writer}-a{n}-r{i}" for i in range(ROWS)],
            "writer": [writer] * ROWS,
            "date": pa.array([0] * ROWS, pa.int32()).cast(pa.date32()),
        }, schema=SCHEMA)  # fmt: skip
        while True:
            try:
                table.append(rows, {f"writer-{writer}": n})
                break
            except CommitConflict:
                continue


def test_concurrent_appends_lose_no_commit_and_write_each_row_once(object_store: SeaweedS3) -> None:
    uri = f"s3://{BUCKET}/concurrent/payload"
    options = object_store.storage_options()
    DeltaInferenceWriter(uri, options).ensure(SCHEMA)
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    writers = [context.Process(target=_append_all, args=(uri, options, w, start)) for w in range(WRITERS)]
    for p in writers:
        p.start()
    start.set()  # all at once: commits race for the same versions
    for p in writers:
        p.join(300)
    assert [p.exitcode for p in writers] == [0] * WRITERS

    table = DeltaTable(uri, storage_options=options)
    assert table.version() == WRITERS * APPENDS  # version 0 created the table; one version per append
    rows = table.to_pandas()
    assert len(rows) == WRITERS * APPENDS * ROWS
    assert rows["request_id"].is_unique
    assert rows.groupby("writer").size().to_dict() == {w: APPENDS * ROWS for w in range(WRITERS)}
    assert {w: table.transaction_version(f"writer-{w}") for w in range(WRITERS)} == dict.fromkeys(
        range(WRITERS), APPENDS - 1
    )
