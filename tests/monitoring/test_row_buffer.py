"""The row buffer: due by rows or by age, versions kept at their highest, time driven by hand."""

from __future__ import annotations

import pyarrow as pa
import pytest

from lakeserve.monitoring.row_buffer import RowBuffer
from lakeserve.monitoring.settings import TablesSettings


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _rows(n: int) -> pa.Table:
    return pa.table(
        {"request_id": [f"r{i}" for i in range(n)], "record_index": pa.array([0] * n, pa.int32())}
    )


def test_due_once_enough_rows_wait() -> None:
    clock = FakeClock()
    buffer = RowBuffer(flush_rows=5, flush_interval_ms=60_000, clock=clock)
    buffer.add(_rows(3), {"a": 2})
    assert not buffer.due()
    buffer.add(_rows(2), {"a": 4})
    assert buffer.due()
    assert buffer.rows == 5


def test_due_once_the_oldest_row_waited_the_interval() -> None:
    clock = FakeClock()
    buffer = RowBuffer.from_settings(TablesSettings(flush_rows=1000, flush_interval_ms=500), clock)
    buffer.add(_rows(1), {})
    clock.now += 0.3
    buffer.add(_rows(1), {})  # a later add does not restart the wait
    assert not buffer.due()
    clock.now += 0.2
    assert buffer.due()
    assert buffer.due(now=clock.now - 0.25) is False  # an explicit now wins over the clock


def test_an_empty_buffer_is_never_due() -> None:
    clock = FakeClock()
    buffer = RowBuffer(flush_rows=1, flush_interval_ms=0, clock=clock)
    buffer.add(_rows(0), {})
    clock.now += 10
    assert buffer.empty
    assert not buffer.due()


def test_versions_alone_make_the_buffer_due_by_age() -> None:
    """A batch whose rows were all sampled out still has positions to record."""
    clock = FakeClock()
    buffer = RowBuffer(flush_rows=10, flush_interval_ms=125, clock=clock)
    buffer.add(_rows(0), {"p0": 7})
    clock.now += 0.125
    assert buffer.due()
    rows, versions = buffer.drain()
    assert (rows.num_rows, versions) == (0, {"p0": 7})


def test_drain_returns_everything_and_resets() -> None:
    clock = FakeClock()
    buffer = RowBuffer(flush_rows=2, flush_interval_ms=1000, clock=clock)
    wider = _rows(1).append_column("amount", pa.array([1.5]))
    buffer.add(_rows(2), {"p0": 10, "p1": 3})
    buffer.add(wider, {"p0": 12, "p1": 2})  # a lower version never wins

    rows, versions = buffer.drain()

    assert rows.num_rows == 3
    assert rows.column("amount").to_pylist() == [None, None, 1.5]
    assert versions == {"p0": 12, "p1": 3}
    assert buffer.empty
    assert (buffer.rows, buffer.due()) == (0, False)
    assert buffer.drain()[0].num_rows == 0


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="flush_rows"):
        RowBuffer(flush_rows=0, flush_interval_ms=10, clock=FakeClock())
