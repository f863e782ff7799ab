"""Evidently 0.7 ``DataDriftPreset`` reports beside the Spark figures (Evidently imported lazily).

Evidently runs on pandas, so the job hands it at most ``evidently_max_rows`` sampled rows
per side. Its per-column verdict is the status of its ``ValueDrift`` tests (``FAIL`` means
drift); its method depends on the reference size (KS / chi-square at p < 0.05 up to 1000
rows, normed Wasserstein / Jensen-Shannon at 0.1 above), which is why it may disagree with
the monitor's own rule; the job reports every disagreement.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lakeserve.errors import ComponentError
from lakeserve.monitoring.report_files import ReportFiles

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True, slots=True)
class ColumnVerdict:
    column: str
    drift_detected: bool
    method: str
    score: float | None


@dataclass(frozen=True, slots=True)
class DriftReport:
    html_path: str
    json_path: str
    verdicts: dict[str, ColumnVerdict]


def drift_report(
    current: pd.DataFrame,
    reference: pd.DataFrame,
    numeric: Sequence[str],
    categorical: Sequence[str],
    out_stem: str,
    files: ReportFiles | None = None,
) -> DriftReport:
    """Run ``DataDriftPreset`` and save ``<out_stem>.html`` and ``<out_stem>.json`` (a path, or a
    location on the tables' object store: ``files``).

    A column with no value on one side (an input the model does not take) is left out, since
    Evidently refuses it; it gets no verdict.
    """
    try:
        from evidently import DataDefinition, Dataset, Report
        from evidently.presets import DataDriftPreset
    except ImportError as exc:
        raise ComponentError(
            "evidently", f"not installed ({exc}); pip install 'evidently>=0.7,<0.8'"
        ) from exc
    filled = {c for c in [*numeric, *categorical] if current[c].notna().any() and reference[c].notna().any()}
    numeric, categorical = [c for c in numeric if c in filled], [c for c in categorical if c in filled]
    cols = [*numeric, *categorical]
    definition = DataDefinition(numerical_columns=list(numeric), categorical_columns=list(categorical))
    try:
        snapshot = Report([DataDriftPreset(columns=cols)], include_tests=True).run(
            current_data=Dataset.from_pandas(current[cols], data_definition=definition),
            reference_data=Dataset.from_pandas(reference[cols], data_definition=definition),
        )
        files = files or ReportFiles()
        html = files.write_text(f"{out_stem}.html", snapshot.get_html_str(as_iframe=False))
        js = files.write_text(f"{out_stem}.json", snapshot.json())
        verdicts = column_verdicts(snapshot.dict())
    except (ValueError, TypeError, KeyError, OSError) as exc:
        raise ComponentError("evidently", f"drift report failed: {exc}") from exc
    return DriftReport(html, js, verdicts)


def column_verdicts(report: dict[str, Any]) -> dict[str, ColumnVerdict]:
    """Per column: drift verdict (its ``ValueDrift`` test failed), method and score."""
    scores = {m["id"]: m.get("value") for m in report.get("metrics", [])}
    out: dict[str, ColumnVerdict] = {}
    for test in report.get("tests", []):
        cfg = test.get("metric_config", {})
        params = cfg.get("params", {})
        if not str(params.get("type", "")).endswith(":ValueDrift"):
            continue
        score = scores.get(cfg.get("metric_id"))
        out[params["column"]] = ColumnVerdict(
            column=params["column"],
            drift_detected=test.get("status") == "FAIL",
            method=str(params.get("method")),
            score=float(score) if isinstance(score, int | float) else None,
        )
    return out
