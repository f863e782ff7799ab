"""The options of the batch-scoring job and their command-line flags (light: no Spark import),
shared by ``python -m lakeserve.jobs.batch_score`` and ``lakeserve jobs run batch-score``."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from lakeserve.errors import ConfigError


@dataclass(frozen=True)
class BatchOptions:
    """How one run reads features and writes its output (CLI flags of the same names)."""

    feature_tables: Mapping[str, str] = field(default_factory=dict)  # view -> Delta URI
    features_from_input: bool = False  # the input already carries every feature column
    timestamp_column: str = "event_timestamp"  # the row's event time, for point-in-time joins
    as_of: datetime | None = None  # event time of rows when the input has no timestamp column
    replace_where: str | None = None  # replace only these rows of the output (a SQL predicate)
    overwrite_schema: bool = False  # let the output's schema change
    fail_on_error: bool = False  # a row that cannot be scored fails the run (nothing is written)
    params: Mapping[str, Any] = field(default_factory=dict)  # the models' params for every row


def add_batch_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The job's flags (``--input``, ``--output`` and the options), for this entry point and others."""
    p.add_argument("--input", required=True, help="Delta table or parquet path/URI, or a table name")
    p.add_argument("--output", required=True, help="Delta table path/URI, or a table name")
    p.add_argument("--feature-table", action="append", default=[], metavar="VIEW=URI",
                   help="Delta table of a feature view (default: the table named after the view)")  # fmt: skip
    p.add_argument("--features-from-input", action="store_true", help="the input carries the features")
    p.add_argument("--timestamp-column", default="event_timestamp", help="the rows' event time")
    p.add_argument("--as-of", type=_utc, help="ISO time: features as of then, for inputs without event times")
    p.add_argument("--replace-where", help="replace only the output rows matching this SQL predicate")
    p.add_argument("--overwrite-schema", action="store_true", help="let the output table's schema change")
    p.add_argument("--fail-on-error", action="store_true", help="fail (write nothing) if a row cannot be scored")
    p.add_argument("--params", type=_params, default={}, metavar="JSON",
                   help="params for every row, a JSON object checked against each model's params schema")  # fmt: skip
    return p


def _utc(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _params(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object, got {text!r}")
    return value


def options_from_args(args: argparse.Namespace) -> BatchOptions:
    """The CLI flags as options (for ``lakeserve jobs run batch-score``)."""
    tables = {}
    for item in args.feature_table:
        view, sep, uri = item.partition("=")
        if not sep or not view or not uri:
            raise ConfigError(f"--feature-table takes VIEW=URI, got {item!r}")
        tables[view] = uri
    return BatchOptions(
        feature_tables=tables, features_from_input=args.features_from_input, timestamp_column=args.timestamp_column,
        as_of=args.as_of, replace_where=args.replace_where, overwrite_schema=args.overwrite_schema,
        fail_on_error=args.fail_on_error, params=args.params,
    )  # fmt: skip
