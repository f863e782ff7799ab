"""docs/grafana-dashboard.json charts only series the service exports: every metric name in its
panels' PromQL is one of the registry's (a renamed series fails here, not on someone's Grafana),
and it has the Kafka workers' panels: consumer lag per partition, batch sizes, retries, outages."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from lakeserve.pipelines.metrics import ServiceMetrics

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json"
# PromQL words that are not metric names: operators, modifiers and literals
KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
            "group_right", "inf", "nan"}  # fmt: skip
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: identifiers that are not functions, label names,
    label values, range durations, dashboard variables or PromQL words."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values and other strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges: [5m], [$__rate_interval]
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)  # label lists
    expr = re.sub(r"\$\w+", "", expr)
    idents = re.findall(r"(?<![\w:.])([A-Za-z_:][\w:]*)\b(?!\s*\()", expr)
    return {name for name in idents if name.lower() not in KEYWORDS}


def exported_names(metrics: ServiceMetrics) -> set[str]:
    """Every sample name the registry's collectors expose (whether or not a series exists yet)."""
    names = set()
    for family in metrics.registry.collect():
        for suffix in SUFFIXES.get(family.type, ("",)):
            names.add(family.name + suffix)
    return names


def panels() -> list[dict[str, object]]:
    return list(json.loads(DASHBOARD.read_text())["panels"])


def expressions() -> dict[str, list[str]]:
    return {str(p["title"]): [str(t["expr"]) for t in p.get("targets", [])] for p in panels()}  # type: ignore[attr-defined]


def test_the_name_extraction_reads_promql() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (served_entity, le) (rate(lakeserve_x_bucket{endpoint="$endpoint",'
        'le!="+Inf"}[$__rate_interval]))) / on (endpoint) group_left max(lakeserve_y offset 5m) > bool 0'
    )
    assert metric_names(expr) == {"lakeserve_x_bucket", "lakeserve_y"}


def test_every_metric_of_the_dashboard_is_exported() -> None:
    exported = exported_names(ServiceMetrics(CollectorRegistry(), "ep"))
    used: set[str] = set()
    for title, exprs in expressions().items():
        assert exprs, f"panel {title!r} has no query"
        for expr in exprs:
            names = metric_names(expr)
            assert names, f"panel {title!r}: no metric in {expr!r}"
            assert names <= exported, f"panel {title!r} charts {sorted(names - exported)}, which nothing exports"
            used |= names
    variables = json.loads(DASHBOARD.read_text())["templating"]["list"]
    for variable in variables:
        query = variable.get("query", "")
        if variable.get("type") == "query":
            selected = metric_names(re.sub(r"^label_values\((\w+),.*\)$", r"\1", query))
            assert selected <= exported, f"variable {variable['name']!r} reads {sorted(selected - exported)}"
    assert len(used) >= 10  # the extraction found the dashboard's series, not nothing


def test_the_dashboard_charts_the_kafka_workers() -> None:
    by_title = {title: " ".join(exprs) for title, exprs in expressions().items()}
    wanted = {
        "lakeserve_kafka_consumer_lag_messages": "partition",
        "lakeserve_batch_size_requests_bucket": "le",
        "lakeserve_component_retries_total": "component",
        "lakeserve_component_outage_seconds_total": "component",
    }
    for name, grouped_by in wanted.items():
        charting = [t for t, e in by_title.items() if name in metric_names(e)]
        assert charting, f"no panel charts {name}"
        assert any(re.search(rf"by \([^)]*\b{grouped_by}\b", by_title[t]) for t in charting), (
            f"{name} is not charted per {grouped_by}"
        )
