"""The A/B analysis job: served entities compared over a period of the inference table.

Per entity: requests, records, error rate, latency mean and p50/p95/p99, prediction mean and,
with labels, accuracy and ROC-AUC. Between the control and each treatment the tests of
:mod:`lakeserve.monitoring.ab`, the sample size the observed effect would need, and a plain
verdict. Rows are upserted (Delta MERGE) into ``<table>_ab_results``; a Markdown summary is
written beside it. Entry point: ``python -m lakeserve --config FILE jobs run ab [--end ISO] [--fail-on-worse]``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lakeserve.errors import ConfigError
from lakeserve.jobs.outcome import JobOutcome
from lakeserve.jobs.settings import JobSettings
from lakeserve.jobs.spark import spark_session
from lakeserve.monitoring import ab
from lakeserve.monitoring.metrics_tables import ddl_schema, merge_rows
from lakeserve.monitoring.settings import AbSettings

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


log = logging.getLogger("lakeserve.jobs.ab_analysis")
ARM = "served_entity"
AB_DDL = """
period_start TIMESTAMP NOT NULL, period_end TIMESTAMP NOT NULL, control STRING NOT NULL,
treatment STRING NOT NULL, metric STRING NOT NULL, test STRING NOT NULL, control_value DOUBLE,
treatment_value DOUBLE, difference DOUBLE, ci_low DOUBLE, ci_high DOUBLE, statistic DOUBLE,
p_value DOUBLE, significant BOOLEAN, n_control BIGINT, n_treatment BIGINT,
sample_size_needed BIGINT, verdict STRING
"""
AB_KEYS = ["period_start", "period_end", "control", "treatment", "metric", "test"]
LOWER_IS_BETTER = {"error_rate", "latency_ms", "latency_p50", "latency_p95", "latency_p99"}
HIGHER_IS_BETTER = {"accuracy", "roc_auc"}


@dataclass(slots=True)
class AbReport:
    period_start: datetime
    period_end: datetime
    control: str
    entities: dict[str, dict[str, float | None]] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    verdicts: dict[str, str] = field(default_factory=dict)
    markdown_path: Path | None = None


def run_ab(
    spark: SparkSession,
    cfg: AbSettings,
    inference: str,
    output: str,
    markdown: Path,
    *,
    end: datetime | None = None,
) -> AbReport:
    """Analyse ``[end - period_days, end)``; write the rows to ``output`` and the summary to ``markdown``."""
    end = end or datetime.now(UTC)
    start = end - timedelta(days=cfg.period_days)
    df = _period(spark, cfg, inference, start, end).cache()
    try:
        entities = _entity_stats(df, cfg)
        if len(entities) < 2:
            raise ConfigError(f"A/B: need two served entities in the period, found {sorted(entities)}")
        control = cfg.control or max(entities, key=lambda e: entities[e]["records"] or 0)
        if control not in entities:
            raise ConfigError(f"ab.control: {control!r} has no rows in the period (have {sorted(entities)})")
        report = AbReport(start, end, control, entities)
        for treatment in sorted(e for e in entities if e != control):
            log.info("A/B: %s against %s", treatment, control)
            rows = _compare(df, cfg, entities, control, treatment)
            report.verdicts[treatment] = _verdict(rows, treatment, control)
            report.rows += [{**r, "verdict": report.verdicts[treatment]} for r in rows]
        report.rows += _summary_rows(entities, control)
    finally:
        df.unpersist()
    stamped = [{**r, "period_start": start, "period_end": end, "control": control} for r in report.rows]
    merge_rows(spark, _frame(spark, stamped), output, AB_KEYS, AB_DDL)
    markdown.parent.mkdir(parents=True, exist_ok=True)
    markdown.write_text(render_markdown(report), encoding="utf-8")
    report.markdown_path = markdown
    return report


def _period(spark: SparkSession, cfg: AbSettings, uri: str, start: datetime, end: datetime) -> DataFrame:
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
        (sf.col("status_code") != 200).cast("int").alias("error"),
        "latency_ms",
        pred.alias("pred"),
        proba.cast("double").alias("proba"),
        label.alias("label"),
        (predicted_pos == (label == 1.0)).cast("int").alias("correct"),
    )


def _entity_stats(df: DataFrame, cfg: AbSettings) -> dict[str, dict[str, float | None]]:
    from pyspark.sql import functions as sf

    q = sf.percentile_approx("latency_ms", [0.5, 0.95, 0.99], 10_000)
    ok = sf.col("error") == 0
    rows = (
        df.groupBy(ARM)
        .agg(
            sf.countDistinct("request_id").alias("requests"),
            sf.count(sf.lit(1)).alias("records"),
            sf.sum("error").alias("errors"),
            sf.avg("latency_ms").alias("latency_ms"),
            sf.var_samp("latency_ms").alias("latency_var"),
            q.alias("lq"),
            sf.avg(sf.when(ok, sf.col("pred"))).alias("prediction"),
            sf.var_samp(sf.when(ok, sf.col("pred"))).alias("prediction_var"),
            sf.count(sf.when(ok, sf.col("pred"))).alias("predictions"),
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


def _compare(
    df: DataFrame, cfg: AbSettings, ent: dict[str, dict[str, float | None]], control: str, treatment: str
) -> list[dict[str, Any]]:
    c, t = ent[control], ent[treatment]
    rows = [_rate_row("error_rate", c, t, "errors", "records", cfg)]
    for metric, var, n in (
        ("latency_ms", "latency_var", "records"),
        ("prediction", "prediction_var", "predictions"),
    ):
        rows.append(_welch_row(metric, var, n, c, t, cfg))
        rows.append(_mw_row(df, metric, control, treatment, c, t))
    if c["labeled"] and t["labeled"]:
        rows.append(_rate_row("accuracy", c, t, "correct", "labeled", cfg))
    rows += _bootstrap_rows(df, cfg, ent, control, treatment)
    for row, sig in zip(rows, ab.holm([r["p_value"] for r in rows], cfg.alpha), strict=True):
        row["significant"] = sig
        row["treatment"] = treatment
    return rows


def _num(d: dict[str, float | None], key: str) -> float:
    value = d[key]
    return float(value) if value is not None else 0.0


def _rate_row(
    metric: str, c: dict[str, Any], t: dict[str, Any], x: str, n: str, cfg: AbSettings
) -> dict[str, Any]:
    res = ab.two_proportion_ztest(int(c[x] or 0), int(c[n]), int(t[x] or 0), int(t[n]))
    p1, p2 = _num(c, x) / c[n], _num(t, x) / t[n]
    return {
        "metric": metric,
        "test": "two_proportion_z",
        "control_value": p1,
        "treatment_value": p2,
        "difference": p2 - p1,
        "statistic": res.statistic,
        "p_value": res.p_value,
        "n_control": c[n],
        "n_treatment": t[n],
        "sample_size_needed": ab.sample_size_proportions(p1, p2, cfg.alpha, cfg.power),
    }


def _welch_row(
    metric: str, var: str, n: str, c: dict[str, Any], t: dict[str, Any], cfg: AbSettings
) -> dict[str, Any]:
    m1, m2, v1, v2 = _num(c, metric), _num(t, metric), _num(c, var), _num(t, var)
    res = ab.welch_ttest(m1, v1, int(c[n]), m2, v2, int(t[n]))
    return {
        "metric": metric,
        "test": "welch_t",
        "control_value": m1,
        "treatment_value": m2,
        "difference": m2 - m1,
        "statistic": res.statistic,
        "p_value": res.p_value,
        "n_control": c[n],
        "n_treatment": t[n],
        "sample_size_needed": ab.sample_size_means(v1**0.5, v2**0.5, m2 - m1, cfg.alpha, cfg.power),
    }


def _mw_row(
    df: DataFrame, metric: str, control: str, treatment: str, c: dict[str, Any], t: dict[str, Any]
) -> dict[str, Any]:
    column = "latency_ms" if metric == "latency_ms" else "pred"
    u, n1, n2, ties = ab.rank_sums(
        df.where("error = 0") if column == "pred" else df, ARM, column, control, treatment
    )
    res = ab.mann_whitney(u, n1, n2, ties)
    return {
        "metric": metric,
        "test": "mann_whitney_u",
        "control_value": c[metric],
        "treatment_value": t[metric],
        "difference": _num(t, metric) - _num(c, metric),
        "statistic": res.statistic,
        "p_value": res.p_value,
        "n_control": n1,
        "n_treatment": n2,
    }


def _bootstrap_rows(
    df: DataFrame, cfg: AbSettings, ent: dict[str, dict[str, Any]], control: str, treatment: str
) -> list[dict[str, Any]]:
    rng = np.random.default_rng(cfg.seed)
    arms = _samples(df, cfg, {a: int(ent[a]["records"] or 0) for a in (control, treatment)})
    rows = []
    for q in (50, 95, 99):
        c, t = arms[control][:, 0], arms[treatment][:, 0]
        c, t = c[~np.isnan(c)], t[~np.isnan(t)]
        rows.append(_boot(f"latency_p{q}", c, t, lambda x, q=q: float(np.percentile(x, q)), cfg, rng))
    c, t = arms[control][:, 1:], arms[treatment][:, 1:]
    c, t = c[~np.isnan(c).any(axis=1)], t[~np.isnan(t).any(axis=1)]
    if len(c) and len(t) and len(np.unique(c[:, 1])) == 2 and len(np.unique(t[:, 1])) == 2:
        rows.append(_boot("roc_auc", c, t, ab.auc, cfg, rng))
    return rows


def _boot(
    metric: str, c: np.ndarray, t: np.ndarray, stat: Any, cfg: AbSettings, rng: np.random.Generator
) -> dict[str, Any]:
    lo, hi, p = ab.bootstrap_diff(c, t, stat, cfg.bootstrap_resamples, cfg.alpha, rng)
    cv, tv = stat(c), stat(t)
    return {
        "metric": metric,
        "test": "bootstrap",
        "control_value": cv,
        "treatment_value": tv,
        "difference": tv - cv,
        "ci_low": lo,
        "ci_high": hi,
        "p_value": p,
        "n_control": len(c),
        "n_treatment": len(t),
    }


def _samples(df: DataFrame, cfg: AbSettings, records: dict[str, int]) -> dict[str, np.ndarray]:
    """(latency, score, label) of about ``bootstrap_max_rows`` rows per arm, in one query."""
    from pyspark.sql import functions as sf

    fractions = {a: min(1.0, 1.2 * cfg.bootstrap_max_rows / max(n, 1)) for a, n in records.items()}
    part = df.where(sf.col(ARM).isin(*records)).sampleBy(ARM, fractions, seed=cfg.seed)
    out: dict[str, list[list[float]]] = {a: [] for a in records}
    for r in part.select(ARM, "latency_ms", "proba", "label").collect():
        rows = out[r[ARM]]
        if len(rows) < cfg.bootstrap_max_rows:
            rows.append([np.nan if v is None else float(v) for v in r[1:]])
    return {a: np.array(v, dtype=float).reshape(-1, 3) for a, v in out.items()}


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
        }
        for e, v in entities.items()
        for k in keys
    ]


def _frame(spark: SparkSession, rows: Sequence[dict[str, Any]]) -> DataFrame:

    s = ddl_schema(AB_DDL)
    fix = {"control_value", "treatment_value", "difference", "ci_low", "ci_high", "statistic", "p_value"}
    data = [
        tuple(float(r[n]) if n in fix and r.get(n) is not None else r.get(n) for n in s.fieldNames())
        for r in rows
    ]
    return spark.createDataFrame(data, s)


def render_markdown(report: AbReport) -> str:
    """The readout: entity table, then one table of tests and the verdict per treatment."""
    lines = [
        f"# A/B readout {report.period_start:%Y-%m-%d %H:%M} to {report.period_end:%Y-%m-%d %H:%M} UTC",
        "",
        f"Control: **{report.control}**",
        "",
        "| entity | requests | error rate | latency mean | p50 | p95 | p99 | prediction mean | accuracy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e, v in sorted(report.entities.items()):
        cells = [
            v["requests"],
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
            "| metric | test | control | treatment | difference | 95% CI | p | significant | n needed |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in report.rows:
            if r.get("treatment") != treatment or r["test"] == "summary":
                continue
            ci = f"[{_f(r['ci_low'])}, {_f(r['ci_high'])}]" if r.get("ci_low") is not None else ""
            lines.append(
                f"| {r['metric']} | {r['test']} | {_f(r['control_value'])} | {_f(r['treatment_value'])} | "
                f"{_f(r['difference'])} | {ci} | {r['p_value']:.3g} | {'yes' if r['significant'] else 'no'} | "
                f"{r.get('sample_size_needed') or ''} |"
            )
    return "\n".join(lines) + "\n"


def _f(v: Any) -> str:
    return "" if v is None else f"{float(v):.4g}"


def _pct(v: Any) -> str:
    return "" if v is None else f"{100 * float(v):.2f}%"


def run_from_settings(settings: JobSettings, *, end: datetime | None = None) -> JobOutcome:
    """One A/B analysis of the endpoint's inference table; the summary is the Markdown readout,
    ``found``: a treatment is significantly worse than the control on some metric."""

    output, markdown = output_locations(settings)
    spark = spark_session(settings.spark, ivy_dir=settings.stack.cache_dir / "ivy")
    report = run_ab(spark, settings.ab, settings.inference_table_uri, output, markdown, end=end)
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


def output_locations(settings: JobSettings) -> tuple[str, Path]:
    """The results table (``ab.output_table``, else ``<table>_ab_results``) and its Markdown readout."""
    table = settings.endpoint.auto_capture_config.table_name
    output = settings.ab.output_table or settings.table_uri(f"{table}_ab_results")
    return output, Path(output.removeprefix("file:") + ".md")
