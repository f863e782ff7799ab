"""The inference log's bookkeeping on the in-memory writer (and delta-rs where it matters):
positions advance only with appended rows, a failed append keeps everything, versions never
move backwards, conflicts are retried, topic identity keeps a recreated topic's records."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from lakeserve.errors import CommitConflict, ComponentError
from lakeserve.monitoring.delta_writer import DeltaInferenceWriter, InMemoryInferenceWriter
from lakeserve.monitoring.inference_log import AnswerLog, InferenceLog, app_id
from lakeserve.monitoring.inference_rows import RowFormat
from lakeserve.monitoring.table_schema import inference_schema
from lakeserve.scoring.records import Origin, RecordResult, RequestResult, ScoringRequest

TOPIC, GROUP = "requests", "g"
P0, P1 = (TOPIC, 0), (TOPIC, 1)
SCHEMA = inference_schema({}, {"prediction": pa.float64()})


def request(offset: int, partition: int = 0, transport: str = "kafka") -> ScoringRequest:
    origin = Origin("kafka", TOPIC, partition, offset) if transport == "kafka" else Origin("http")
    return ScoringRequest(f"r{partition}-{offset}-{transport}", b"{}", datetime.now(UTC), origin)


def answered(requests: Iterable[ScoringRequest]) -> list[RequestResult]:
    return [RequestResult(r, 200, b"{}", [RecordResult(0, prediction=1.0)]) for r in requests]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FlakyWriter(InMemoryInferenceWriter):
    """Fails the next ``failures`` appends with ``error``."""

    def __init__(self) -> None:
        super().__init__()
        self.failures, self.error = 0, ComponentError("delta", "disk full")

    def append(self, rows: pa.Table, transactions: Mapping[str, int]) -> None:
        if self.failures:
            self.failures -= 1
            raise self.error
        super().append(rows, transactions)


def new_log(writer: InMemoryInferenceWriter, flush_rows: int = 1000, clock: Clock | None = None,
            max_buffered_rows: int = 1_000_000) -> InferenceLog:  # fmt: skip
    schema = writer.ensure(SCHEMA)
    return InferenceLog(
        writer, RowFormat(schema, "ep", 1.0, 1 << 20), GROUP, flush_rows=flush_rows, flush_interval_ms=500,
        clock=clock or Clock(), max_buffered_rows=max_buffered_rows,
    )  # fmt: skip


def test_positions_advance_with_appended_rows_only() -> None:
    writer = InMemoryInferenceWriter()
    log = new_log(writer, flush_rows=3)
    assert log.resume({P0: None, P1: None}) == {P0: -1, P1: -1}
    fresh = log.fresh([request(0), request(1), request(0, 1)])
    assert len(fresh) == 3
    assert not log.due()  # nothing appended, nothing to commit
    log.add(answered(fresh))
    assert log.due()
    positions = log.flush()
    assert positions == {P0: 2, P1: 1}
    assert writer.commits[-1][1] == {app_id(GROUP, TOPIC, 0): 1, app_id(GROUP, TOPIC, 1): 0}
    log.committed(positions)
    assert not log.due()
    assert log.flush() == {}  # nothing new: nothing to commit again


def test_a_failed_append_keeps_its_rows_and_offsets_and_commits_nothing() -> None:
    writer = FlakyWriter()
    log = new_log(writer)
    log.resume({P0: None})
    log.add(answered(log.fresh([request(0), request(1)])))
    writer.failures = 2
    for _ in range(2):
        with pytest.raises(ComponentError, match="disk full"):
            log.flush()
    assert log.logged() == {P0: -1}
    assert log.waiting_rows == 2
    assert log.fresh([request(1)]) == []  # still buffered: a re-fetch is not scored twice
    assert log.flush() == {P0: 2}
    assert writer.rows()["kafka_offset"].to_pylist() == [0, 1]
    assert len(writer.commits) == 1


def test_records_the_table_holds_are_skipped_and_their_position_committed() -> None:
    writer = InMemoryInferenceWriter()
    writer.ensure(SCHEMA)
    writer.append(SCHEMA.empty_table(), {app_id(GROUP, TOPIC, 0): 4})  # logged before a crash
    log = new_log(writer)
    assert log.resume({P0: None}) == {P0: 4}
    assert [r.origin.offset for r in log.fresh([request(o) for o in range(7)])] == [5, 6]
    assert log.stats.skipped_logged == 5
    assert log.due()  # offset 5 can be committed without any append
    assert log.flush() == {P0: 5}
    assert len(writer.commits) == 1  # the flush wrote nothing


def test_a_record_fetched_twice_in_one_batch_is_scored_once() -> None:
    log = new_log(InMemoryInferenceWriter())
    log.resume({P0: None})
    twice = [request(0), request(1), request(0), request(1), request(2)]
    assert [r.origin.offset for r in log.fresh(twice)] == [0, 1, 2]


def test_versions_never_move_backwards_and_a_zombies_rows_are_dropped() -> None:
    writer = InMemoryInferenceWriter()
    log = new_log(writer)
    log.resume({P0: None})
    log.add(answered(log.fresh([request(o) for o in range(5)])))  # offsets 0-4 wait
    # meanwhile the partition moved: its new owner logged up to offset 2
    writer.append(SCHEMA.empty_table(), {app_id(GROUP, TOPIC, 0): 2})
    assert log.flush() == {P0: 5}
    rows, versions = writer.commits[-1]
    assert rows["kafka_offset"].to_pylist() == [3, 4]
    assert versions == {app_id(GROUP, TOPIC, 0): 4}
    assert log.stats.rows_dropped_as_logged == 3
    # and when the other owner is already past everything buffered, no version is written at all
    log.add(answered(log.fresh([request(5)])))
    writer.append(SCHEMA.empty_table(), {app_id(GROUP, TOPIC, 0): 9})
    log.flush()
    assert writer.transaction_version(app_id(GROUP, TOPIC, 0)) == 9
    assert writer.commits[-1][0].num_rows == 0  # the last commit is the other owner's


def test_commit_conflicts_are_retried() -> None:
    writer = FlakyWriter()
    log = new_log(writer)
    log.resume({P0: None})
    log.add(answered(log.fresh([request(0)])))
    writer.failures, writer.error = 3, CommitConflict("concurrent append")
    assert log.flush() == {P0: 1}
    assert log.stats.commit_conflicts == 3
    writer.failures = 20
    log.add(answered(log.fresh([request(1)])))
    with pytest.raises(ComponentError, match="conflicting commit"):
        log.flush()
    assert log.waiting_rows == 1


def test_a_revoked_partitions_unappended_rows_are_dropped_for_the_next_owner() -> None:
    writer = InMemoryInferenceWriter()
    log = new_log(writer)
    log.resume({P0: None, P1: None})
    log.add(answered(log.fresh([request(0), request(0, 1)])))
    log.release([P1])
    assert log.flush() == {P0: 1}
    assert writer.rows()["kafka_partition"].to_pylist() == [0]
    assert log.stats.rows_dropped_revoked == 1
    assert log.fresh([request(1, 1)]) == []  # not ours any more
    log.add(answered([request(2, 1)]))  # answered before the revoke, added after it
    assert log.waiting_rows == 0


def test_a_recreated_topic_has_another_identity_so_nothing_is_skipped() -> None:
    writer = InMemoryInferenceWriter()
    writer.ensure(SCHEMA)
    writer.append(SCHEMA.empty_table(), {app_id(GROUP, TOPIC, 0, "old-id"): 399})
    log = new_log(writer)
    assert log.resume({P0: "new-id"}) == {P0: -1}
    assert len(log.fresh([request(o) for o in range(400)])) == 400


def test_rest_rows_have_no_position_and_are_shed_beyond_the_cap() -> None:
    writer = FlakyWriter()
    log = new_log(writer, max_buffered_rows=3)
    for offset in range(5):
        log.add(answered([request(offset, transport="http")]))
    assert log.waiting_rows == 3
    assert log.stats.rows_dropped_overflow == 2
    assert log.flush() == {}
    assert writer.commits[-1][1] == {}
    assert writer.rows().num_rows == 3


def test_due_by_rows_or_by_age() -> None:
    clock = Clock()
    log = new_log(InMemoryInferenceWriter(), flush_rows=2, clock=clock)
    log.resume({P0: None})
    log.add(answered(log.fresh([request(0)])))
    assert not log.due()
    clock.now = 0.6
    assert log.due()
    log.flush()
    log.add(answered(log.fresh([request(1), request(2)])))
    assert log.due()


def test_on_delta_rows_and_versions_land_in_one_commit_per_flush(tmp_path: Path) -> None:
    writer = DeltaInferenceWriter(str(tmp_path / "payload"))
    schema = writer.ensure(SCHEMA)
    log = InferenceLog(writer, RowFormat(schema, "ep", 1.0, 1 << 20), GROUP, flush_rows=10,
                       flush_interval_ms=0, clock=Clock())  # fmt: skip
    log.resume({P0: "id-1"})
    log.add(answered(log.fresh([request(o) for o in range(3)])))
    assert log.flush() == {P0: 3}
    again = InferenceLog(writer, RowFormat(schema, "ep", 1.0, 1 << 20), GROUP, flush_rows=10,
                         flush_interval_ms=0, clock=Clock())  # fmt: skip
    assert again.resume({P0: "id-1", P1: "id-1"}) == {P0: 2, P1: -1}


def test_two_writers_and_a_schema_change_on_one_delta_table_log_every_row_once(tmp_path: Path) -> None:
    """Two workers (two groups) append to one table while a third process widens its schema (as
    another endpoint version's ``ensure`` does). A commit that meets a concurrent one ("Metadata
    changed since last commit") is retried (the retry itself: ``test_commit_conflicts_are_retried``);
    whatever the interleaving, every row lands once and every version is the last offset."""
    uri = str(tmp_path / "payload")
    DeltaInferenceWriter(uri).ensure(SCHEMA)
    logs = {}
    for group in ("g1", "g2"):
        writer = DeltaInferenceWriter(uri)
        logs[group] = InferenceLog(writer, RowFormat(writer.ensure(SCHEMA), "ep", 1.0, 1 << 20), group,
                                   flush_rows=1, flush_interval_ms=0, clock=Clock())  # fmt: skip
        logs[group].resume({P0: None})
    errors: list[BaseException] = []

    def work(log: InferenceLog) -> None:
        try:
            for offset in range(40):
                log.add(answered(log.fresh([request(offset)])))
                log.flush()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    def widen() -> None:
        widener = DeltaInferenceWriter(uri)
        for i in range(8):
            widener.ensure(inference_schema({f"extra_{i}": pa.float64()}, {"prediction": pa.float64()}))

    threads = [threading.Thread(target=work, args=(log,)) for log in logs.values()] + [threading.Thread(target=widen)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    table = DeltaTable(uri)
    rows = table.to_pandas(columns=["request_id"])
    assert len(rows) == 80
    assert rows.request_id.nunique() == 40  # the same request ids in both groups' partitions ...
    for group in logs:
        assert table.transaction_version(app_id(group, TOPIC, 0)) == 39  # ... each group's 40 rows once
    assert "extra_7" in table.schema().to_arrow().names


def test_answer_log_returns_answered_positions_without_a_table() -> None:
    """Capture disabled: positions of answered records become due (batched like appends), a
    failed commit stays due, a record fetched twice is answered once, revoked partitions go."""
    clock = Clock()
    log = AnswerLog(flush_rows=3, flush_interval_ms=500, clock=clock)
    assert log.resume({P0: None, P1: None}) == {P0: -1, P1: -1}
    fresh = log.fresh([request(0), request(1), request(0, 1), request(0, 2)])  # partition 2 is not owned
    assert [r.request_id for r in fresh] == ["r0-0-kafka", "r0-1-kafka", "r1-0-kafka"]
    log.add(answered(fresh[:2]))
    assert not log.due()
    clock.now = 0.5
    assert log.due()  # the oldest answer waited flush_interval_ms
    assert log.flush() == {P0: 2}
    assert log.due()  # not committed yet: due again
    log.committed({P0: 2})
    assert not log.due()
    assert log.fresh([request(1), request(2)])[0].request_id == "r0-2-kafka"  # offset 1 was answered
    log.add(answered([request(0, 1), request(2), request(3)]))
    assert log.due()  # flush_rows answers wait
    log.release([P1])
    assert log.flush() == {P0: 4}
    assert log.waiting_rows == 0
    assert log.stats.rows_logged == 0
