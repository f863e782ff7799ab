"""Helpers for the batch tests: the parity run's data (streamed records as batch rows, a later
feature snapshot, point-in-time probes and bad rows)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import pandas as pd

from lakeserve.jobs.batch_score import BatchReport
from lakeserve.jobs.demo_data import REQUEST_FIELDS

LATER = timedelta(days=1)  # the second feature snapshot, after every streamed request
PIT_CUSTOMER = 5


@dataclass
class ParityRun:
    """What the stream answered and what batch wrote for the same rows."""

    stream: pd.DataFrame  # the stream's inference-table rows
    batch: pd.DataFrame  # the batch output rows
    report: BatchReport
    customers: pd.DataFrame  # the first snapshot (what the online store serves)
    later: pd.DataFrame  # the second snapshot's rows
    now: datetime


def later_snapshot(customers: pd.DataFrame, at: datetime) -> pd.DataFrame:
    """Customer PIT_CUSTOMER with very different values, dated ``at``."""
    row = customers[customers.customer_id == PIT_CUSTOMER].copy()
    row["chargeback_rate"] = 0.5
    row["account_age_days"] = 3
    row["event_timestamp"] = row["created"] = pd.Timestamp(at)
    return row


def stream_inputs(stream: pd.DataFrame) -> pd.DataFrame:
    """The streamed records as batch rows: request fields, timed at their arrival."""
    rows = stream[["client_request_id", *REQUEST_FIELDS, "timestamp"]].rename(columns={"timestamp": "event_timestamp"})
    return rows.astype({"customer_id": "int64", "hour_of_day": "int64", "is_online": "int64"})


def extra_rows(stream: pd.DataFrame, now: datetime) -> pd.DataFrame:
    """Point-in-time probes and rows that cannot be scored."""
    base = {"amount": 50.0, "merchant_category": "grocery", "hour_of_day": 12, "is_online": 0}
    rows = [
        ("pit-before", PIT_CUSTOMER, now - timedelta(hours=1), base["amount"]),
        ("pit-after", PIT_CUSTOMER, now + 2 * LATER, base["amount"]),
        ("pit-no-snapshot-yet", PIT_CUSTOMER, now - timedelta(days=90), base["amount"]),
        ("bad-unknown-customer", 987_654, now, base["amount"]),
        ("bad-null-amount", PIT_CUSTOMER, now, None),
    ]
    frame = pd.DataFrame(
        [{**base, "client_request_id": c, "customer_id": k, "event_timestamp": t, "amount": a} for c, k, t, a in rows]
    )
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
    return frame[list(stream_inputs(stream).columns)]
