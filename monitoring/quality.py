"""Model quality per window, model and slice, once labels exist.

Classification: accuracy, precision, recall and F1 from the confusion counts (for the
``positive_label`` class, or macro averages over the labels seen when none is given) and
ROC-AUC from the score column, exact (Mann-Whitney with ties counted half). Regression: MAE,
RMSE and R² from sums. Spark aggregates; only confusion counts and one row per group are
collected.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

Metrics = dict[str, float | None]
GroupKey = tuple[object, ...]


def classification_metrics(confusion: Mapping[tuple[str, str], int], positive: str | None) -> Metrics:
    """Accuracy, precision, recall, F1 from {(label, prediction): count}."""
    total = sum(confusion.values())
    if total == 0:
        return {}
    correct = sum(n for (y, p), n in confusion.items() if y == p)
    classes = [positive] if positive is not None else sorted({y for y, _ in confusion})
    per_class = [_precision_recall(confusion, c) for c in classes]
    precision = sum(p for p, _ in per_class) / len(per_class)
    recall = sum(r for _, r in per_class) / len(per_class)
    f1s = [2 * p * r / (p + r) if p + r > 0 else 0.0 for p, r in per_class]
    return {
        "accuracy": correct / total,
        "precision": precision,
        "recall": recall,
        "f1": sum(f1s) / len(f1s),
    }


def _precision_recall(confusion: Mapping[tuple[str, str], int], cls: str) -> tuple[float, float]:
    tp = confusion.get((cls, cls), 0)
    predicted = sum(n for (_, p), n in confusion.items() if p == cls)
    actual = sum(n for (y, _), n in confusion.items() if y == cls)
    return (tp / predicted if predicted else 0.0), (tp / actual if actual else 0.0)


def regression_metrics(n: int, sum_abs: float, sum_sq: float, sum_y: float, sum_y2: float) -> Metrics:
    """MAE, RMSE, R² from n, Σ|e|, Σe², Σy, Σy²."""
    if n == 0:
        return {}
    sst = sum_y2 - sum_y * sum_y / n
    return {
        "mae": sum_abs / n,
        "rmse": math.sqrt(sum_sq / n),
        "r2": 1.0 - sum_sq / sst if sst > 0 else None,
    }


def confusion_counts(labeled: DataFrame, keys: Sequence[str], label: str, pred: str) -> DataFrame:
    """(keys..., y, p, n): label and prediction as strings."""
    from pyspark.sql import functions as sf

    y = sf.col(label).cast("string").alias("y")
    p = sf.col(pred).cast("string").alias("p")
    return labeled.groupBy(*keys, y, p).agg(sf.count(sf.lit(1)).alias("n"))


def regression_sums(labeled: DataFrame, keys: Sequence[str], label: str, pred: str) -> DataFrame:
    from pyspark.sql import functions as sf

    y = sf.col(label).cast("double")
    e = sf.col(pred).cast("double") - y
    return labeled.groupBy(*keys).agg(
        sf.count(sf.lit(1)).alias("n"),
        sf.sum(sf.abs(e)).alias("sum_abs"),
        sf.sum(e * e).alias("sum_sq"),
        sf.sum(y).alias("sum_y"),
        sf.sum(y * y).alias("sum_y2"),
    )


def roc_auc(labeled: DataFrame, keys: Sequence[str], label: str, score: str, positive: str) -> DataFrame:
    """(keys..., roc_auc): exact AUC = P(score_pos > score_neg) + ½ P(tie), by a sort in Spark."""
    from pyspark.sql import Window
    from pyspark.sql import functions as sf

    is_pos = sf.col(label).cast("string") == sf.lit(positive)
    counts = (
        labeled.where(sf.col(score).isNotNull())
        .groupBy(*keys, sf.col(score).cast("double").alias("s"))
        .agg(sf.count_if(is_pos).alias("pos"), sf.count_if(~is_pos).alias("neg"))
    )
    below = Window.partitionBy(*keys).orderBy("s").rowsBetween(Window.unboundedPreceding, -1)
    ranked = counts.withColumn("neg_below", sf.coalesce(sf.sum("neg").over(below), sf.lit(0)))
    wins = sf.sum(sf.col("pos") * (sf.col("neg_below") + 0.5 * sf.col("neg")))
    auc = wins / (sf.sum("pos") * sf.sum("neg"))
    agg = ranked.groupBy(*keys).agg(auc.alias("roc_auc"), sf.sum("pos").alias("p"), sf.sum("neg").alias("q"))
    return agg.where((sf.col("p") > 0) & (sf.col("q") > 0)).drop("p", "q")


# --- labels: how a labels table finds the records it labels ---------------------------------

RECORD = ["request_id", "record_index"]


def label_keys(labels: DataFrame, mode: str, key_cols: Sequence[str]) -> list[str]:
    """The columns a label row is identified by: its record (``request_id``), its client's request
    (``client_request_id``, with ``record_index`` when the labels table has it) or its entity key
    and event time (``key_as_of``; the time is the column :func:`as_of_records` gets)."""
    if mode == "request_id":
        return list(RECORD)
    if mode == "client_request_id":
        return ["client_request_id", *(["record_index"] if "record_index" in labels.columns else [])]
    return list(key_cols)


def dedupe_labels(labels: DataFrame, keys: Sequence[str], label: str, alias: str) -> DataFrame:
    """One row per key with a non-null key and label: ``(keys..., alias)``; a key labelled twice
    keeps the largest of its labels, so that every run picks the same one."""
    from pyspark.sql import functions as sf

    present = labels.where(sf.col(f"`{label}`").isNotNull())
    for k in keys:
        present = present.where(sf.col(f"`{k}`").isNotNull())
    return present.groupBy(*[sf.col(f"`{k}`") for k in keys]).agg(sf.max(sf.col(f"`{label}`")).alias(alias))


def as_of_records(
    scored: DataFrame,
    labels: DataFrame,
    keys: Sequence[str],
    scored_ts: str,
    label_ts: str,
    label: str,
    tolerance_s: float,
) -> DataFrame:
    """``(request_id, record_index, label)``: each label joined to the record of its key scored
    latest at or before the label's time, and at most ``tolerance_s`` before it.

    An equi-join on the key, then a group per label: Spark shuffles by key, never into one
    partition. Records scored at the same instant are told apart by (request_id, record_index),
    the largest winning. A record that two labels pick keeps the earlier label (the outcome
    nearest its prediction); the later one labels nothing.
    """
    from pyspark.sql import functions as sf

    lts, sts = "__ls_label_ts", "__ls_scored_ts"
    lab = dedupe_labels(labels.withColumn(lts, sf.col(f"`{label_ts}`").cast("timestamp")), [*keys, lts], label, label)
    rec = scored.select(
        *[sf.col(f"`{k}`") for k in keys], *RECORD, sf.col(f"`{scored_ts}`").cast("timestamp").alias(sts)
    )
    tolerance_us = int(tolerance_s * 1_000_000)
    lag = sf.unix_micros(sf.col(lts)) - sf.unix_micros(sf.col(sts))
    pairs = lab.join(rec, list(keys)).where((lag >= 0) & (lag <= tolerance_us))
    latest = pairs.groupBy(*[sf.col(f"`{k}`") for k in keys], lts).agg(
        sf.max(sf.struct(sts, *RECORD)).alias("r"), sf.first(sf.col(f"`{label}`")).alias(label)
    )
    record = [sf.col(f"r.{c}").alias(c) for c in RECORD]
    return latest.groupBy(*record).agg(sf.min_by(sf.col(f"`{label}`"), sf.col(lts)).alias(label))
