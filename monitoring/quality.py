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
