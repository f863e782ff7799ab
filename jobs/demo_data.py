"""A realistic demo data set: card transactions scored for fraud.

* customer features (the Feast source), one snapshot per customer, keyed by ``customer_id``;
* labelled transactions for training, carrying the request-time fields
  ``amount``, ``merchant_category``, ``hour_of_day`` and ``is_online``;
* scoring requests as MLflow bodies that carry only the customer id and request-time fields.

Fraud is planted by a known logistic rule, so a model can learn it and a test can check it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

COUNTRIES = ["US", "GB", "DE", "FR", "BR", "IN"]
MERCHANTS = ["grocery", "fuel", "restaurants", "travel", "electronics", "gaming"]
REQUEST_FIELDS = ["customer_id", "amount", "merchant_category", "hour_of_day", "is_online"]
LABEL = "is_fraud"


@dataclass(frozen=True)
class DemoData:
    customers: pd.DataFrame
    transactions: pd.DataFrame

    def write(self, folder: Path) -> tuple[Path, Path]:
        """Write both frames as parquet; returns (customers, transactions) paths."""
        folder.mkdir(parents=True, exist_ok=True)
        customers, transactions = folder / "customers.parquet", folder / "transactions.parquet"
        # microseconds: Spark cannot read parquet's nanosecond timestamps
        options = {"coerce_timestamps": "us", "allow_truncated_timestamps": True}
        self.customers.to_parquet(customers, index=False, **options)
        self.transactions.to_parquet(transactions, index=False, **options)
        return customers, transactions


def generate(
    n_customers: int = 2000, n_transactions: int = 20_000, seed: int = 7, now: datetime | None = None
) -> DemoData:
    """Customers with a feature snapshot 60 days ago, and transactions in the 30 days before ``now``."""
    rng = np.random.default_rng(seed)
    now = (now or datetime.now(UTC)).replace(microsecond=0)
    customers = _customers(rng, n_customers, now - timedelta(days=60))
    transactions = _transactions(rng, customers, n_transactions, now)
    return DemoData(customers=customers, transactions=transactions)


def _customers(rng: np.random.Generator, n: int, snapshot: datetime) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_id": np.arange(1, n + 1, dtype="int64"),
            "customer_age": rng.integers(18, 90, n).astype("int64"),
            "account_age_days": rng.integers(1, 4000, n).astype("int64"),
            "avg_amount_30d": np.round(rng.lognormal(3.6, 0.6, n), 2),
            "txn_count_7d": rng.poisson(9, n).astype("int64"),
            "chargeback_rate": np.round(rng.beta(1, 60, n), 4),
            "home_country": rng.choice(COUNTRIES, n, p=[0.4, 0.15, 0.15, 0.1, 0.1, 0.1]),
            "event_timestamp": pd.Timestamp(snapshot),
            "created": pd.Timestamp(snapshot),
        }
    )


def _transactions(rng: np.random.Generator, customers: pd.DataFrame, n: int, now: datetime) -> pd.DataFrame:
    who = customers.iloc[rng.integers(0, len(customers), n)].reset_index(drop=True)
    merchant = rng.choice(MERCHANTS, n, p=[0.3, 0.15, 0.2, 0.1, 0.15, 0.1])
    frame = pd.DataFrame(
        {
            "customer_id": who["customer_id"].to_numpy(),
            "amount": np.round(who["avg_amount_30d"].to_numpy() * rng.lognormal(0.0, 0.8, n), 2),
            "merchant_category": merchant,
            "hour_of_day": rng.integers(0, 24, n).astype("int64"),
            "is_online": rng.integers(0, 2, n).astype("int64"),
            "event_timestamp": pd.Timestamp(now) - pd.to_timedelta(rng.uniform(0, 30 * 86400, n), unit="s"),
        }
    )
    frame[LABEL] = (rng.uniform(0, 1, n) < fraud_probability(frame, who)).astype("int64")
    return frame


def fraud_probability(tx: pd.DataFrame, customer: pd.DataFrame) -> np.ndarray:
    """The planted rule: large amounts against the customer's habit, risky online merchants,
    night hours, past chargebacks and young accounts raise the odds."""
    ratio = np.log(tx["amount"].to_numpy() / customer["avg_amount_30d"].to_numpy())
    risky = np.isin(tx["merchant_category"].to_numpy(), ["electronics", "gaming"]) & (tx["is_online"] == 1)
    logit = (
        -4.2
        + 1.3 * ratio
        + 1.6 * risky
        + 0.9 * (tx["hour_of_day"].to_numpy() < 5)
        + 25.0 * customer["chargeback_rate"].to_numpy()
        - 0.0004 * customer["account_age_days"].to_numpy()
    )
    return np.asarray(1.0 / (1.0 + np.exp(-logit)))


def request_bodies(
    customers: pd.DataFrame,
    n: int,
    seed: int = 11,
    records_per_request: int = 1,
    prefix: str = "demo",
    amount_scale: float = 1.0,
) -> list[bytes]:
    """Scoring requests as ``dataframe_records`` bodies carrying only request-time fields;
    ``amount_scale`` != 1 plants drift in ``amount`` against the training data."""
    rng = np.random.default_rng(seed)
    bodies = []
    for i in range(n):
        rows = customers.iloc[rng.integers(0, len(customers), records_per_request)]
        records = [
            {
                "customer_id": int(c.customer_id),
                "amount": round(float(c.avg_amount_30d * rng.lognormal(0.0, 0.8) * amount_scale), 2),
                "merchant_category": str(rng.choice(MERCHANTS)),
                "hour_of_day": int(rng.integers(0, 24)),
                "is_online": int(rng.integers(0, 2)),
            }
            for c in rows.itertuples()
        ]
        bodies.append(json.dumps({"dataframe_records": records, "client_request_id": f"{prefix}-{i}"}).encode())
    return bodies


def bad_bodies(n: int, seed: int = 13) -> list[bytes]:
    """Requests that cannot be scored, one kind after another: malformed JSON, an unknown body
    format, an unknown customer, a value of the wrong type, a non-finite number."""
    rng = np.random.default_rng(seed)
    good = {"customer_id": 1, "amount": 10.0, "merchant_category": "fuel", "hour_of_day": 9, "is_online": 0}
    kinds: list[Callable[[], bytes]] = [
        lambda: b'{"dataframe_records": [{"customer_id": 1,',
        lambda: json.dumps({"rows": [good]}).encode(),
        lambda: json.dumps({"dataframe_records": [{**good, "customer_id": int(rng.integers(10**6, 10**7))}]}).encode(),
        lambda: json.dumps({"dataframe_records": [{**good, "hour_of_day": "late"}]}).encode(),
        lambda: json.dumps({"dataframe_records": [good]}).replace('"amount": 10.0', '"amount": NaN').encode(),
    ]
    return [kinds[i % len(kinds)]() for i in range(n)]
