"""The inference-table writer: one plug point, a delta-rs implementation and an in-memory fake.

Every :meth:`InferenceTableWriter.append` is one atomic Delta commit holding the rows *and*
the ``(app_id, version)`` transaction identifiers (Delta ``txn`` actions): either both land or
neither does. That is what the exactly-once guarantee rests on; its bookkeeping (which app id,
which version, what to skip) is :mod:`lakeserve.monitoring.inference_log`'s alone. The writer
does not filter rows; it only records and reports the versions. A commit that loses to a
concurrent one raises :class:`~lakeserve.errors.CommitConflict`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Protocol

import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError
from deltalake.schema import Field as DeltaField

from lakeserve.errors import CommitConflict, ComponentError, ConfigError
from lakeserve.monitoring.table_schema import PARTITION_COLUMNS, extend_schema


class InferenceTableWriter(Protocol):
    """Where inference rows go; appends are atomic and carry the Kafka positions they cover."""

    def ensure(self, schema: pa.Schema) -> pa.Schema:
        """Create the table, or add ``schema``'s new columns; refuse a retype. Returns the table schema."""
        ...

    def append(self, rows: pa.Table, transactions: Mapping[str, int]) -> None:
        """One atomic commit: ``rows`` plus every ``app_id → version`` pair (rows may be empty)."""
        ...

    def transaction_version(self, app_id: str) -> int | None:
        """The latest version committed for ``app_id``; None when the table or the id is unknown."""
        ...

    def transaction_versions(self, app_ids: Iterable[str]) -> dict[str, int | None]:
        """:meth:`transaction_version` of each id, read from one snapshot of the table."""
        ...


def align_rows(rows: pa.Table, table_schema: pa.Schema) -> pa.Table:
    """``rows`` in the table's column order and types; columns the rows lack become nulls.

    Rows written by an endpoint whose schema is older than the table (a column was added
    since) thus still append. A column the table lacks is refused: call ``ensure`` first.
    """
    unknown = sorted(set(rows.column_names) - set(table_schema.names))
    if unknown:
        raise ConfigError(f"inference rows have columns the table lacks, call ensure() first: {unknown}")
    columns = [
        rows.column(f.name).cast(f.type) if f.name in rows.column_names else pa.nulls(rows.num_rows, f.type)
        for f in table_schema
    ]
    return pa.Table.from_arrays(columns, schema=table_schema)


class DeltaInferenceWriter:
    """:class:`InferenceTableWriter` on a Delta table through delta-rs (no JVM), partitioned by ``date``."""

    def __init__(self, uri: str, storage_options: dict[str, str] | None = None) -> None:
        self.uri = uri
        self._storage_options = storage_options
        self._table: DeltaTable | None = None

    def ensure(self, schema: pa.Schema) -> pa.Schema:
        with _delta_errors(f"prepare {self.uri}"):
            table = self._latest() or self._create(schema)
            _check_partitioning(self.uri, table)
            return self._add_columns(table, schema)

    def append(self, rows: pa.Table, transactions: Mapping[str, int]) -> None:
        if rows.num_rows == 0 and not transactions:
            return
        txns = [Transaction(app, version) for app, version in sorted(transactions.items())]
        with _delta_errors(f"append to {self.uri}"):
            table = self._latest()
            if table is None:
                raise ConfigError(f"no inference table at {self.uri}; call ensure() first")
            data = align_rows(rows, _arrow_schema(table))
            write_deltalake(
                table, data, mode="append", commit_properties=CommitProperties(app_transactions=txns)
            )

    def transaction_version(self, app_id: str) -> int | None:
        return self.transaction_versions([app_id])[app_id]

    def transaction_versions(self, app_ids: Iterable[str]) -> dict[str, int | None]:
        with _delta_errors(f"read transaction versions of {self.uri}"):
            table = self._latest()
            return {a: None if table is None else table.transaction_version(a) for a in app_ids}

    def _latest(self) -> DeltaTable | None:
        """The table at its newest version (cached handle, refreshed), or None when absent."""
        if self._table is None:
            if not DeltaTable.is_deltatable(self.uri, self._storage_options):
                return None
            self._table = DeltaTable(self.uri, storage_options=self._storage_options)
        else:
            self._table.update_incremental()
        return self._table

    def _create(self, schema: pa.Schema) -> DeltaTable:
        # mode="ignore": a worker that lost the race to create it just opens it
        DeltaTable.create(
            self.uri,
            schema,
            mode="ignore",
            partition_by=PARTITION_COLUMNS,
            storage_options=self._storage_options,
        )
        self._table = DeltaTable(self.uri, storage_options=self._storage_options)
        return self._table

    def _add_columns(self, table: DeltaTable, wanted: pa.Schema) -> pa.Schema:
        current = _arrow_schema(table)
        try:
            grown = extend_schema(current, wanted)
        except ValueError as exc:
            raise ConfigError(f"inference table {self.uri}: {exc}") from exc
        added = [f for f in grown if f.name not in current.names]
        if added:
            table.alter.add_columns([DeltaField.from_arrow(f) for f in added])
            table.update_incremental()
        return _arrow_schema(table)


def _arrow_schema(table: DeltaTable) -> pa.Schema:
    return pa.schema(table.schema().to_arrow())


def _check_partitioning(uri: str, table: DeltaTable) -> None:
    found = table.metadata().partition_columns
    if list(found) != PARTITION_COLUMNS:
        raise ConfigError(f"inference table {uri} is partitioned by {found}, expected {PARTITION_COLUMNS}")


@contextmanager
def _delta_errors(action: str) -> Iterator[None]:
    """Wrap delta-rs, object-store and Arrow failures where they enter."""
    try:
        yield
    except CommitFailedError as exc:
        raise CommitConflict(f"could not {action}: {exc}") from exc
    except (DeltaError, OSError, pa.ArrowException) as exc:
        raise ComponentError("delta", f"could not {action}: {exc}") from exc
    except BaseException as exc:
        # delta-rs turns a panic of its Rust side into pyo3's PanicException, a BaseException (seen
        # when its object store failed mid-write: "Already shut down"): a failed write all the same
        if type(exc).__name__ != "PanicException":
            raise
        raise ComponentError("delta", f"could not {action}: delta-rs panicked: {exc}") from exc


class InMemoryInferenceWriter:
    """:class:`InferenceTableWriter` kept in memory, for pure-logic tests of the delivery loop."""

    def __init__(self) -> None:
        self.schema: pa.Schema | None = None
        self.commits: list[tuple[pa.Table, dict[str, int]]] = []
        self._versions: dict[str, int] = {}

    def ensure(self, schema: pa.Schema) -> pa.Schema:
        try:
            self.schema = schema if self.schema is None else extend_schema(self.schema, schema)
        except ValueError as exc:
            raise ConfigError(f"inference table (in memory): {exc}") from exc
        return self.schema

    def append(self, rows: pa.Table, transactions: Mapping[str, int]) -> None:
        if self.schema is None:
            raise ConfigError("no inference table (in memory); call ensure() first")
        if rows.num_rows == 0 and not transactions:
            return
        self.commits.append((align_rows(rows, self.schema), dict(transactions)))
        self._versions.update(transactions)

    def transaction_version(self, app_id: str) -> int | None:
        return self._versions.get(app_id)

    def transaction_versions(self, app_ids: Iterable[str]) -> dict[str, int | None]:
        return {a: self._versions.get(a) for a in app_ids}

    def rows(self) -> pa.Table:
        """Every appended row, in commit order, with the current schema."""
        if self.schema is None:
            raise ConfigError("no inference table (in memory); call ensure() first")
        tables = [align_rows(t, self.schema) for t, _ in self.commits]
        return pa.concat_tables(tables) if tables else self.schema.empty_table()
