"""The A/B analysis job: served entities compared over a period of the inference table.

Per entity: requests, routing keys, records, error rate, latency mean and p50/p95/p99,
prediction mean and, with labels, accuracy and ROC-AUC. Routing is sticky per key, so the
comparisons between the control and each treatment treat the key (``ab.cluster_key``), not
the record, as the unit (:mod:`lakeserve.monitoring.ab_clusters`): Spark sums each metric per
(arm, key), then per arm (nothing is collected per record or per key), and the driver runs a
cluster-robust t-test with a CI, the design effect and the minimum detectable effect; Mann-Whitney
ranks the keys' means in range partitions; percentiles and ROC-AUC come from a bootstrap that
resamples whole keys. Then the sample size the observed effect would need, and a plain verdict.
Rows are upserted (Delta MERGE) into ``<table>_ab_results``; a Markdown summary is written
beside it. Entry point: ``python -m lakeserve --config FILE jobs run ab [--end ISO] [--fail-on-worse]``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lakeserve.errors import ConfigError, LakeserveError
from lakeserve.jobs.outcome import JobOutcome
from lakeserve.jobs.settings import JobSettings
from lakeserve.jobs.spark import spark_session
from lakeserve.monitoring import ab
from lakeserve.monitoring.ab_clusters import (
    Clustered,
    ClusterMoments,
    cluster_bootstrap,
    cluster_ttest,
    superiority,
)
from lakeserve.monitoring.metrics_tables import ddl_schema, merge_rows
from lakeserve.monitoring.report_files import ReportFiles
from lakeserve.monitoring.settings import AbSettings
from lakeserve.scoring.models import routing_key

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession


log = logging.getLogger("lakeserve.jobs.ab_analysis")
ARM = "served_entity"
KEY = "__key"  # the routing key of a record, as the router saw it: its key's value, else its request id
HASH_BUCKETS = 1_000_000
RATES = {"error_rate", "accuracy"}
TERMS = ("n", "s", "q", "ss", "nn", "sn")  # ClusterMoments' sums, in its field order
AB_DDL = """
period_start TIMESTAMP NOT NULL, period_end TIMESTAMP NOT NULL, control STRING NOT NULL,
treatment STRING NOT NULL, metric STRING NOT NULL, test STRING NOT NULL, control_value DOUBLE,
treatment_value DOUBLE, difference DOUBLE, ci_low DOUBLE, ci_high DOUBLE, statistic DOUBLE,
p_value DOUBLE, significant BOOLEAN, n_control BIGINT, n_treatment BIGINT,
sample_size_needed BIGINT, verdict STRING, clusters_control BIGINT, clusters_treatment BIGINT,
design_effect DOUBLE, mde DOUBLE
"""
AB_KEYS = ["period_start", "period_end", "control", "treatment", "metric", "test"]
LOWER_IS_BETTER = {"error_rate", "latency_ms", "latency_p50", "latency_p95", "latency_p99"}
HIGHER_IS_BETTER = {"accuracy", "roc_auc"}


@dataclass(slots=True)
class AbReport:
    period_start: datetime
    period_end: datetime
    control: str
    cluster_key: str
    entities: dict[str, dict[str, float | None]] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    verdicts: dict[str, str] = field(default_factory=dict)
    markdown_path: str | None = None


def run_ab(
    spark: SparkSession,
    cfg: AbSettings,
    inference: str,
    output: str,
    markdown: str | Path,
    *,
    end: datetime | None = None,
    routing_key: str | None = None,
    reports: ReportFiles | None = None,
) -> AbReport:
    """Analyse ``[end - period_days, end)``; write the rows to ``output`` and the summary to ``markdown``
    (a path, or a location on the tables' object store: ``reports``).

    The unit of analysis is ``cfg.cluster_key``; unset, ``routing_key`` (the key the endpoint
    routes by, :func:`endpoint_routing_key`) when the table has that column; else each request."""
    end = end or datetime.now(UTC)
    start = end - timedelta(days=cfg.period_days)
    unit = _unit(spark.read.format("delta").load(inference).columns, cfg, routing_key, inference)
    df = _period(spark, cfg, unit, inference, start, end).cache()
    keys = _key_sums(df).cache()
    try:
        entities = _entity_stats(df)
        if len(entities) < 2:
            raise ConfigError(f"A/B: need two served entities in the period, found {sorted(entities)}")
        control = cfg.control or max(entities, key=lambda e: entities[e]["records"] or 0)
        if control not in entities:
            raise ConfigError(f"ab.control: {control!r} has no rows in the period (have {sorted(entities)})")
        moments = _arm_moments(keys)
        report = AbReport(start, end, control, unit or "request_id", entities)
        for treatment in sorted(e for e in entities if e != control):
            log.info("A/B: %s against %s, by %s", treatment, control, report.cluster_key)
            rows = _compare(df, keys, cfg, moments, control, treatment)
            report.verdicts[treatment] = _verdict(rows, treatment, control)
            report.rows += [{**r, "verdict": report.verdicts[treatment]} for r in rows]
        report.rows += _summary_rows(entities, control)
    finally:
        keys.unpersist()
        df.unpersist()
    stamped = [{**r, "period_start": start, "period_end": end, "control": control} for r in report.rows]
    merge_rows(spark, _frame(spark, stamped), output, AB_KEYS, AB_DDL)
    report.markdown_path = (reports or ReportFiles()).write_text(str(markdown), render_markdown(report))
    return report


def _unit(columns: Sequence[str], cfg: AbSettings, routing_key: str | None, uri: str) -> str | None:
    """The column whose value is the unit of analysis; None: the request."""
    if cfg.cluster_key is not None:
        if cfg.cluster_key not in columns:
            raise ConfigError(f"ab.cluster_key: {cfg.cluster_key!r} is not a column of the inference table {uri}")
        return cfg.cluster_key
    if routing_key is None:
        return None
    if routing_key not in columns:
        log.warning(
            "A/B: the endpoint routes by %r, which the inference table does not hold: each request is a unit "
            "(set ab.cluster_key to the routing key's column)",
            routing_key,
        )
        return None
    return routing_key


def _period(
    spark: SparkSession, cfg: AbSettings, unit: str | None, uri: str, start: datetime, end: datetime
) -> DataFrame:
    from pyspark.sql import functions as sf

    df = (
        spark.read.format("delta")
        .load(uri)
        .where(
            (sf.col("timestamp") >= sf.lit(start))
            & (sf.col("timestamp") < sf.lit(end))
            & sf.col(ARM).isNotNull()
        )
    )
    if not cfg.include_shadow:
        df = df.where(~sf.col("is_shadow"))
    request = sf.concat(sf.lit("r:"), sf.col("request_id"))
    key = request if unit is None else sf.coalesce(sf.concat(sf.lit("k:"), sf.col(unit).cast("string")), request)
    label = sf.lit(None).cast("double")
    if cfg.label_col and cfg.labels_table:
        labels = (
            spark.read.format("delta")
            .load(cfg.labels_table)
            .groupBy("request_id", "record_index")
            .agg(sf.first(cfg.label_col, ignorenulls=True).alias("__label"))
        )
        df = df.join(labels, ["request_id", "record_index"], "left")
        label = (sf.col("__label").cast("string") == cfg.positive_label).cast("double")
    elif cfg.label_col:
        label = (sf.col(cfg.label_col).cast("string") == cfg.positive_label).cast("double")
    proba = sf.col(cfg.prediction_proba_col).cast("double") if cfg.prediction_proba_col else sf.lit(None)
    pred = sf.col(cfg.prediction_col).cast("double")
    predicted_pos = sf.col(cfg.prediction_col).cast("string") == cfg.positive_label
    return df.select(
        ARM,
        "request_id",
        key.alias(KEY),
        (sf.col("status_code") != 200).cast("int").alias("error"),
        "latency_ms",
        pred.alias("pred"),
        proba.cast("double").alias("proba"),
        label.alias("label"),
        (predicted_pos == (label == 1.0)).cast("int").alias("correct"),
    )


def _entity_stats(df: DataFrame) -> dict[str, dict[str, float | None]]:
    from pyspark.sql import functions as sf

    q = sf.percentile_approx("latency_ms", [0.5, 0.95, 0.99], 10_000)
    ok = sf.col("error") == 0
    rows = (
        df.groupBy(ARM)
        .agg(
            sf.countDistinct("request_id").alias("requests"),
            sf.countDistinct(KEY).alias("keys"),
            sf.count(sf.lit(1)).alias("records"),
            sf.sum("error").alias("errors"),
            sf.avg("latency_ms").alias("latency_ms"),
            q.alias("lq"),
            sf.avg(sf.when(ok, sf.col("pred"))).alias("prediction"),
            sf.count(sf.when(ok, sf.col("label"))).alias("labeled"),
            sf.sum(sf.when(ok & sf.col("label").isNotNull(), sf.col("correct"))).alias("correct"),
        )
        .collect()
    )
    out: dict[str, dict[str, float | None]] = {}
    for r in rows:
        d = r.asDict()
        lq = d.pop("lq") or [None, None, None]
        d.update(
            latency_p50=lq[0], latency_p95=lq[1], latency_p99=lq[2], error_rate=d["errors"] / d["records"]
        )
        d["accuracy"] = d["correct"] / d["labeled"] if d["labeled"] else None
        out[str(d.pop(ARM))] = d
    return out


def _metric_values() -> dict[str, Column]:
    """Each compared metric's value per record (null where the record has none)."""
    from pyspark.sql import functions as sf

    ok = sf.col("error") == 0
    return {
        "error_rate": sf.col("error").cast("double"),
        "latency_ms": sf.col("latency_ms").cast("double"),
        "prediction": sf.when(ok, sf.col("pred")),
        "accuracy": sf.when(ok & sf.col("label").isNotNull(), sf.col("correct").cast("double")),
    }


def _key_sums(df: DataFrame) -> DataFrame:
    """One row per (arm, key): each metric's count, sum and sum of squares over the key's records."""
    from pyspark.sql import functions as sf

    aggs = []
    for m, v in _metric_values().items():
        aggs += [
            sf.count(v).cast("double").alias(f"{m}__n"),
            sf.coalesce(sf.sum(v), sf.lit(0.0)).alias(f"{m}__s"),
            sf.coalesce(sf.sum(v * v), sf.lit(0.0)).alias(f"{m}__q"),
        ]
    return df.groupBy(ARM, KEY).agg(*aggs)


def _arm_moments(keys: DataFrame) -> dict[str, dict[str, ClusterMoments]]:
    """Per arm and metric, the sums over keys that the cluster-robust tests need (one small collect)."""
    from pyspark.sql import functions as sf

    aggs = []
    for m in _metric_values():
        n, s, q = (sf.col(f"{m}__{x}") for x in "nsq")
        aggs += [
            sf.count_if(n > 0).alias(f"{m}__keys"),
            *(sf.sum(e).alias(f"{m}__{name}") for name, e in _moment_terms(n, s, q).items()),
        ]
    out: dict[str, dict[str, ClusterMoments]] = {}
    for r in keys.groupBy(ARM).agg(*aggs).collect():
        d = r.asDict()
        out[str(d[ARM])] = {
            m: ClusterMoments(int(d[f"{m}__keys"]), *(float(d[f"{m}__{x}"] or 0.0) for x in TERMS))
            for m in _metric_values()
        }
    return out


def _moment_terms(n: Column, s: Column, q: Column) -> dict[str, Column]:
    """The per-key terms whose sums make a :class:`ClusterMoments`."""
    return {"n": n, "s": s, "q": q, "ss": s * s, "nn": n * n, "sn": s * n}


def _compare(
    df: DataFrame,
    keys: DataFrame,
    cfg: AbSettings,
    moments: dict[str, dict[str, ClusterMoments]],
    control: str,
    treatment: str,
) -> list[dict[str, Any]]:
    c, t = moments[control], moments[treatment]
    rows = [
        _cluster_row(m, c[m], t[m], cfg) for m in _metric_values() if c[m].keys >= 2 and t[m].keys >= 2
    ]
    for metric in ("latency_ms", "prediction"):
        if c[metric].keys and t[metric].keys:
            rows.append(_mw_row(keys, metric, control, treatment, c[metric], t[metric], cfg))
    rows += _bootstrap_rows(df, cfg, {a: int(moments[a]["error_rate"].n) for a in (control, treatment)})
    for row, sig in zip(rows, ab.holm([r["p_value"] for r in rows], cfg.alpha), strict=True):
        row["significant"] = sig
        row["treatment"] = treatment
    return rows


def _cluster_row(metric: str, c: ClusterMoments, t: ClusterMoments, cfg: AbSettings) -> dict[str, Any]:
    res = cluster_ttest(c, t, cfg.alpha, cfg.power, rate=metric in RATES)
    per_key = (c.n + t.n) / (c.keys + t.keys)
    return {
        "metric": metric,
        "test": "cluster_t",
        "control_value": res.control,
        "treatment_value": res.treatment,
        "difference": res.difference,
        "ci_low": res.ci_low,
        "ci_high": res.ci_high,
        "statistic": res.statistic,
        "p_value": res.p_value,
        "n_control": int(c.n),
        "n_treatment": int(t.n),
        "clusters_control": c.keys,
        "clusters_treatment": t.keys,
        "design_effect": res.design_effect,
        "mde": res.mde,
        "sample_size_needed": math.ceil(res.keys_needed * per_key) if res.keys_needed else None,
    }


def _mw_row(
    keys: DataFrame,
    metric: str,
    control: str,
    treatment: str,
    c: ClusterMoments,
    t: ClusterMoments,
    cfg: AbSettings,
) -> dict[str, Any]:
    """Mann-Whitney over the keys' means (ranks in Spark, range-partitioned)."""
    from pyspark.sql import functions as sf

    n = sf.col(f"{metric}__n")
    means = keys.where(n > 0).select(ARM, (sf.col(f"{metric}__s") / n).alias("v"))
    u, n1, n2, ties = ab.rank_sums(means, ARM, "v", control, treatment)
    effect, lo, hi, p = superiority(u, n1, n2, ties, cfg.alpha)
    return {
        "metric": metric,
        "test": "mann_whitney_keys",
        "difference": effect,
        "ci_low": lo,
        "ci_high": hi,
        "statistic": u,
        "p_value": p,
        "n_control": int(c.n),
        "n_treatment": int(t.n),
        "clusters_control": n1,
        "clusters_treatment": n2,
    }


def _bootstrap_rows(df: DataFrame, cfg: AbSettings, records: dict[str, int]) -> list[dict[str, Any]]:
    rng = np.random.default_rng(cfg.seed)
    c, t = _key_samples(df, cfg, records).values()  # control's, then treatment's
    rows = []
    c_lat, t_lat = _complete(c, [0], cfg), _complete(t, [0], cfg)
    if c_lat.keys >= 2 and t_lat.keys >= 2:
        for q in (50, 95, 99):
            rows.append(_boot(f"latency_p{q}", c_lat, t_lat, lambda x, q=q: float(np.percentile(x, q)), cfg, rng))
    c_auc, t_auc = _complete(c, [1, 2], cfg), _complete(t, [1, 2], cfg)
    if c_auc.keys >= 2 and t_auc.keys >= 2 and not (np.isnan(ab.auc(c_auc.rows)) or np.isnan(ab.auc(t_auc.rows))):
        rows.append(_boot("roc_auc", c_auc, t_auc, ab.auc, cfg, rng))
    return rows


def _complete(arm: tuple[np.ndarray, np.ndarray], columns: list[int], cfg: AbSettings) -> Clustered:
    """The sampled keys' rows with a value in every one of ``columns``, whole keys up to the cap."""
    key, rows = arm
    picked = rows[:, columns]
    keep = ~np.isnan(picked).any(axis=1)
    part = picked[keep] if len(columns) > 1 else picked[keep, 0]
    return Clustered.group(key[keep], part).limit(cfg.bootstrap_max_rows)


def _boot(
    metric: str, c: Clustered, t: Clustered, stat: Any, cfg: AbSettings, rng: np.random.Generator
) -> dict[str, Any]:
    lo, hi, p = cluster_bootstrap(c, t, stat, cfg.bootstrap_resamples, cfg.alpha, rng)
    cv, tv = stat(c.rows), stat(t.rows)
    return {
        "metric": metric,
        "test": "cluster_bootstrap",
        "control_value": cv,
        "treatment_value": tv,
        "difference": tv - cv,
        "ci_low": lo,
        "ci_high": hi,
        "p_value": p,
        "n_control": len(c.rows),
        "n_treatment": len(t.rows),
        "clusters_control": c.keys,
        "clusters_treatment": t.keys,
    }


def _key_samples(
    df: DataFrame, cfg: AbSettings, records: dict[str, int]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(key, rows of latency, score, label) of whole keys, about ``bootstrap_max_rows`` records per
    arm: a key is in when a seeded hash of it falls under its arm's share, so a key's records come
    all or none (in one query)."""
    from pyspark.sql import functions as sf

    share = sf.lit(0.0)
    for arm, n in records.items():
        share = sf.when(sf.col(ARM) == arm, sf.lit(min(1.0, 1.2 * cfg.bootstrap_max_rows / max(n, 1)))).otherwise(share)
    draw = sf.pmod(sf.xxhash64(sf.col(KEY), sf.lit(cfg.seed)), sf.lit(HASH_BUCKETS)) < share * HASH_BUCKETS
    part = df.where(sf.col(ARM).isin(*records) & draw)
    out: dict[str, tuple[list[str], list[list[float]]]] = {a: ([], []) for a in records}
    for r in part.select(ARM, KEY, "latency_ms", "proba", "label").collect():
        key, rows = out[r[ARM]]
        key.append(r[KEY])
        rows.append([np.nan if v is None else float(v) for v in r[2:]])
    return {a: (np.array(k, dtype=object), np.array(v, dtype=float).reshape(-1, 3)) for a, (k, v) in out.items()}


def _verdict(rows: list[dict[str, Any]], treatment: str, control: str) -> str:
    worse: list[str] = []
    better: list[str] = []
    other: list[str] = []
    for r in rows:
        if not r["significant"]:
            continue
        up = r["difference"] > 0
        if r["metric"] in LOWER_IS_BETTER:
            (worse if up else better).append(r["metric"])
        elif r["metric"] in HIGHER_IS_BETTER:
            (better if up else worse).append(r["metric"])
        else:
            other.append(r["metric"])
    if not (worse or better or other):
        return f"{treatment}: no significant difference from {control}"
    parts = [
        f"worse on {', '.join(sorted(set(worse)))}" if worse else "",
        f"better on {', '.join(sorted(set(better)))}" if better else "",
        f"different {', '.join(sorted(set(other)))}" if other else "",
    ]
    return f"{treatment} vs {control}: " + "; ".join(p for p in parts if p)


def _summary_rows(entities: dict[str, dict[str, Any]], control: str) -> list[dict[str, Any]]:
    keys = [
        "requests",
        "keys",
        "records",
        "error_rate",
        "latency_ms",
        "latency_p50",
        "latency_p95",
        "latency_p99",
        "prediction",
        "accuracy",
    ]
    return [
        {
            "treatment": e,
            "metric": k,
            "test": "summary",
            "treatment_value": v.get(k),
            "n_treatment": v["records"],
            "clusters_treatment": v["keys"],
        }
        for e, v in entities.items()
        for k in keys
    ]


def _frame(spark: SparkSession, rows: Sequence[dict[str, Any]]) -> DataFrame:
    s = ddl_schema(AB_DDL)
    doubles = {f.name for f in s.fields if f.dataType.typeName() == "double"}
    data = [tuple(_cell(r.get(n), n in doubles) for n in s.fieldNames()) for r in rows]
    return spark.createDataFrame(data, s)


def _cell(value: Any, double: bool) -> Any:
    """A double as float, and NaN (an undefined statistic) as null."""
    if not double or value is None:
        return value
    value = float(value)
    return None if math.isnan(value) else value


def render_markdown(report: AbReport) -> str:
    """The readout: entity table, then one table of tests and the verdict per treatment."""
    lines = [
        f"# A/B readout {report.period_start:%Y-%m-%d %H:%M} to {report.period_end:%Y-%m-%d %H:%M} UTC",
        "",
        f"Control: **{report.control}**. Unit of analysis: the routing key `{report.cluster_key}` "
        "(routing is sticky per key, so keys, not records, are independent).",
        "",
        "| entity | requests | keys | error rate | latency mean | p50 | p95 | p99 | prediction mean | accuracy |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e, v in sorted(report.entities.items()):
        cells = [
            v["requests"],
            v["keys"],
            _pct(v["error_rate"]),
            *(_f(v[k]) for k in ("latency_ms", "latency_p50", "latency_p95", "latency_p99", "prediction")),
            _pct(v["accuracy"]),
        ]
        lines.append(f"| {e} | " + " | ".join(str(c) for c in cells) + " |")
    for treatment, verdict in sorted(report.verdicts.items()):
        lines += [
            "",
            f"## {treatment}",
            "",
            f"**Verdict:** {verdict}",
            "",
            "| metric | test | control | treatment | difference | 95% CI | p | significant | keys | "
            "design effect | MDE | n needed |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in report.rows:
            if r.get("treatment") != treatment or r["test"] == "summary":
                continue
            lines.append(
                f"| {r['metric']} | {r['test']} | {_f(r.get('control_value'))} | {_f(r.get('treatment_value'))} | "
                f"{_f(r['difference'])} | [{_f(r['ci_low'])}, {_f(r['ci_high'])}] | {r['p_value']:.3g} | "
                f"{'yes' if r['significant'] else 'no'} | {r['clusters_control']} / {r['clusters_treatment']} | "
                f"{_f(r.get('design_effect'))} | {_f(r.get('mde'))} | {r.get('sample_size_needed') or ''} |"
            )
    lines += [
        "",
        "cluster_t: ratio estimator with a cluster-robust variance (Welch-type, Satterthwaite df); "
        "mann_whitney_keys: on the keys' means, difference = P(treatment key > control key) - 1/2; "
        "cluster_bootstrap: keys resampled. Design effect: variance over the variance if records were "
        "independent. MDE: the difference detected at alpha with the configured power; n needed: "
        "records per arm (as whole keys) to detect the observed difference.",
    ]
    return "\n".join(lines) + "\n"


def _f(v: Any) -> str:
    return "" if v is None else f"{float(v):.4g}"


def _pct(v: Any) -> str:
    return "" if v is None else f"{100 * float(v):.2f}%"


def run_from_settings(settings: JobSettings, *, end: datetime | None = None) -> JobOutcome:
    """One A/B analysis of the endpoint's inference table; the summary is the Markdown readout,
    ``found``: a treatment is significantly worse than the control on some metric."""

    output, markdown = output_locations(settings)
    spark = spark_session(settings.spark, tables=settings.tables, ivy_dir=settings.stack.cache_dir / "ivy")
    report = run_ab(
        spark, settings.ab, settings.inference_table_uri, output, markdown, end=end,
        routing_key=None if settings.ab.cluster_key else endpoint_routing_key(settings),
        reports=ReportFiles(settings.tables.delta_storage_options()),
    )  # fmt: skip
    worse = _worse(report.rows)
    facts = {
        "control": report.control,
        "period_start": report.period_start.isoformat(),
        "period_end": report.period_end.isoformat(),
        "worse": worse,
        "significant": sorted({r["treatment"] for r in report.rows if r.get("significant")}),
        "verdicts": report.verdicts,
    }
    return JobOutcome("ab", bool(worse), render_markdown(report), facts)


def _worse(rows: Sequence[dict[str, Any]]) -> dict[str, list[str]]:
    """Treatment -> the metrics it is significantly worse on (as the verdict counts them)."""
    worse: dict[str, set[str]] = {}
    for r in rows:
        if not r.get("significant"):
            continue
        up = r["difference"] > 0
        if (r["metric"] in LOWER_IS_BETTER and up) or (r["metric"] in HIGHER_IS_BETTER and not up):
            worse.setdefault(r["treatment"], set()).add(r["metric"])
    return {t: sorted(m) for t, m in sorted(worse.items())}


def endpoint_routing_key(settings: JobSettings) -> str | None:
    """The key the endpoint routes by, as the core picks it (``traffic_config.sticky_key``, else the
    entity key its models record, read from the registry); None when it routes by request, or when
    the registry cannot say (a warning: the job then treats each request as a unit)."""
    try:
        return routing_key(settings.endpoint, settings.mlflow)
    except LakeserveError as exc:
        log.warning("A/B: cannot tell the key the endpoint routes by (%s): set ab.cluster_key", exc)
        return None


def output_locations(settings: JobSettings) -> tuple[str, str]:
    """The results table (``ab.output_table``, else ``<table>_ab_results``) and its Markdown readout."""
    table = settings.endpoint.auto_capture_config.table_name
    output = settings.ab.output_table or settings.table_uri(f"{table}_ab_results")
    return output, output + ".md"
