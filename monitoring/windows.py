"""Time windows of the monitor: granularities as Databricks writes them, and their Spark expressions.

Fixed-length granularities (minutes, hours, days) are aligned on the Unix epoch in UTC, so a
``1 day`` window starts at midnight UTC; ``1 week`` starts on Monday and ``1 month`` on the
first of the month (``date_trunc``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import Column

_UNITS = {"minute": 60, "hour": 3600, "day": 86400}
_PATTERN = re.compile(r"^\s*(\d+)\s+(minute|hour|day|week|month)s?\s*$")


@dataclass(frozen=True, slots=True)
class Granularity:
    """A parsed granularity: ``seconds`` for fixed lengths, ``calendar`` ('week'/'month') otherwise."""

    label: str
    seconds: int | None
    calendar: str | None


def parse_granularity(text: str) -> Granularity:
    """``"5 minutes"`` → 300 s; ``"1 week"`` / ``"1 month"`` → calendar windows; else ValueError."""
    match = _PATTERN.match(text.lower())
    if match is None:
        raise ValueError(f"granularity {text!r}: write '<n> minutes|hours|days', '1 week' or '1 month'")
    n, unit = int(match.group(1)), match.group(2)
    if n < 1:
        raise ValueError(f"granularity {text!r} must be at least 1 {unit}")
    if unit in _UNITS:
        return Granularity(text, n * _UNITS[unit], None)
    if n != 1:
        raise ValueError(f"granularity {text!r}: only '1 {unit}' is supported for calendar units")
    return Granularity(text, None, unit)


def window_start(g: Granularity, ts: Column) -> Column:
    """The start of the window holding ``ts`` (a UTC timestamp column)."""
    from pyspark.sql import functions as sf

    if g.seconds is not None:
        epoch = sf.unix_seconds(ts)
        return sf.timestamp_seconds(epoch - sf.pmod(epoch, sf.lit(g.seconds)))
    return sf.date_trunc(str(g.calendar), ts)


def next_window(g: Granularity, start: Column) -> Column:
    """The start of the window after the one starting at ``start``."""
    from pyspark.sql import functions as sf

    if g.seconds is not None:
        return sf.timestamp_seconds(sf.unix_seconds(start) + sf.lit(g.seconds))
    if g.calendar == "week":
        return sf.timestamp_seconds(sf.unix_seconds(start) + sf.lit(7 * 86400))
    return sf.to_timestamp(sf.add_months(start, 1))


def shift_start(g: Granularity, start: datetime, steps: int) -> datetime:
    """The start of the window ``steps`` windows after (negative: before) the one at ``start``."""
    if g.seconds is not None:
        return start + timedelta(seconds=g.seconds * steps)
    if g.calendar == "week":
        return start + timedelta(weeks=steps)
    months = start.year * 12 + start.month - 1 + steps
    return start.replace(year=months // 12, month=months % 12 + 1)
