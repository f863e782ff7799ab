"""Batch inference rows between Delta appends: commit cost grows per append, not per row.

The delivery loop adds each micro-batch's rows with the Kafka positions they cover, asks
:meth:`RowBuffer.due` after every batch and, when it answers yes, drains the buffer into one
:meth:`~lakeserve.monitoring.delta_writer.InferenceTableWriter.append`. The buffer holds no
thread and reads no clock of its own: the clock is injected, so tests drive time by hand.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pyarrow as pa

from lakeserve.monitoring.settings import TablesSettings

Clock = Callable[[], float]  # monotonic seconds, like time.monotonic


class RowBuffer:
    """Rows and pending transaction versions waiting for the next append."""

    def __init__(self, flush_rows: int, flush_interval_ms: int, clock: Clock) -> None:
        if flush_rows < 1 or flush_interval_ms < 0:
            raise ValueError(
                f"need flush_rows >= 1 and flush_interval_ms >= 0, got {flush_rows}, {flush_interval_ms}"
            )
        self._flush_rows = flush_rows
        self._flush_interval_s = flush_interval_ms / 1000.0
        self._clock = clock
        self._tables: list[pa.Table] = []
        self._versions: dict[str, int] = {}
        self._rows = 0
        self._since: float | None = None  # when the oldest pending item arrived

    @classmethod
    def from_settings(cls, settings: TablesSettings, clock: Clock) -> RowBuffer:
        return cls(settings.flush_rows, settings.flush_interval_ms, clock)

    @property
    def rows(self) -> int:
        """Rows waiting."""
        return self._rows

    @property
    def empty(self) -> bool:
        """Nothing waiting: no rows and no transaction versions."""
        return self._since is None

    def add(self, rows: pa.Table, transactions: Mapping[str, int]) -> None:
        """Buffer ``rows``; for each app id the highest version seen is kept."""
        if rows.num_rows == 0 and not transactions:
            return
        if self._since is None:
            self._since = self._clock()
        if rows.num_rows:
            self._tables.append(rows)
            self._rows += rows.num_rows
        for app, version in transactions.items():
            self._versions[app] = max(version, self._versions.get(app, version))

    def due(self, now: float | None = None) -> bool:
        """True once ``flush_rows`` rows wait, or the oldest item waited ``flush_interval_ms``."""
        if self._since is None:
            return False
        now = self._clock() if now is None else now
        return self._rows >= self._flush_rows or now - self._since >= self._flush_interval_s

    def drain(self) -> tuple[pa.Table, dict[str, int]]:
        """Everything waiting, as one table (schemas unified, missing columns null) and versions."""
        tables = pa.concat_tables(self._tables, promote_options="default") if self._tables else pa.table({})
        versions = self._versions
        self._tables, self._versions, self._rows, self._since = [], {}, 0, None
        return tables, versions
