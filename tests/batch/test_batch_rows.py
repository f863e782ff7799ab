"""The executor step on its own (no Spark): routing, shadow copies, poison rows, fail_on_error.

Uses the in-memory ``FakeServedModel`` shipped with the scoring core; the end-to-end tests in
test_batch_score.py use the real models, Feast and Delta.
"""

from __future__ import annotations

import dataclasses

import pandas as pd
import pyarrow as pa
import pytest

from lakeserve.jobs.batch_models import RowsFailed, score_batch
from lakeserve.jobs.batch_plan import EntityPlan, ScoringPlan, batch_endpoint
from lakeserve.scoring.routing import Router
from lakeserve.scoring.settings import EndpointSettings, MlflowSettings, Route, ServedEntity, TrafficConfig
from lakeserve.scoring.testing import FakeServedModel

INPUT = pa.schema([pa.field("x", pa.float64(), nullable=False)])
OUTPUT = pa.schema([pa.field("prediction", pa.float64())])


def _model(name: str, factor: float) -> FakeServedModel:
    def fn(frame: pd.DataFrame) -> pd.Series:
        if (frame["x"] == 13.0).any():
            raise ValueError("unlucky")
        return frame["x"] * factor

    return FakeServedModel(name, fn, model_version=name[-1], input_schema=INPUT, output_schema=OUTPUT)


def _plan(traffic: TrafficConfig, fail_on_error: bool = False) -> ScoringPlan:
    served = {n: ServedEntity(name=n, entity_name="m", entity_version="1") for n in ("a1", "b2", "s3")}
    endpoint = batch_endpoint(EndpointSettings(served_entities=list(served.values()), traffic_config=traffic), served)
    entities = {n: EntityPlan(e, None) for n, e in served.items()}
    return ScoringPlan(endpoint, entities, MlflowSettings(), "key", OUTPUT, fail_on_error=fail_on_error)


SPLIT = TrafficConfig(routes=[Route(served_model_name="a1", traffic_percentage=50),
                              Route(served_model_name="b2", traffic_percentage=50)], sticky_key="key")  # fmt: skip
MODELS = {"a1": _model("a1", 1.0), "b2": _model("b2", 10.0), "s3": _model("s3", 100.0)}


def _batch(xs: list[float | None]) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict({"key": [f"k{i}" for i in range(len(xs))], "x": pa.array(xs, pa.float64())})


def test_rows_route_as_the_router_does_and_keep_their_order() -> None:
    out = score_batch(_plan(SPLIT), MODELS, _batch([i + 0.5 for i in range(40)])).to_pandas()
    expected = Router(SPLIT).assign([f"k{i}" for i in range(40)])
    assert out["served_entity"].tolist() == expected
    assert set(expected) == {"a1", "b2"}
    factor = out["served_entity"].map({"a1": 1.0, "b2": 10.0})
    assert (out["prediction"] == out["x"] * factor).all()
    assert (out["status_code"] == 200).all()
    assert (out["model_version"] == out["served_entity"].str[-1]).all()


def test_a_poison_row_fails_alone_and_a_bad_value_is_a_400() -> None:
    out = score_batch(_plan(SPLIT), MODELS, _batch([1.0, 13.0, None, 4.0, 5.0])).to_pandas()
    assert out["status_code"].tolist() == [200, 500, 400, 200, 200]
    assert out.loc[1, "error_code"] == "MODEL_ERROR"
    entity = out.loc[1, "served_entity"]
    assert out.loc[1, "error_message"] == f"served entity {entity!r} failed on this record"  # exception: in the log
    assert "unlucky" not in out.loc[1, "error_message"]
    assert out.loc[2, "error_code"] == "INVALID_PARAMETER_VALUE"
    assert out["prediction"].isna().tolist() == [False, True, True, False, False]


def test_the_shadow_scores_a_copy_of_each_row_it_does_not_answer() -> None:
    traffic = SPLIT.model_copy(update={"shadow_model_name": "s3"})
    out = score_batch(_plan(traffic), MODELS, _batch([1.0, 2.0, 3.0])).to_pandas()
    answered, copies = out[~out.is_shadow], out[out.is_shadow]
    assert answered["x"].tolist() == [1.0, 2.0, 3.0]
    assert copies["x"].tolist() == [1.0, 2.0, 3.0]
    assert set(copies["served_entity"]) == {"s3"}
    assert (copies["prediction"] == copies["x"] * 100).all()


def test_fail_on_error_raises_instead_of_recording() -> None:
    with pytest.raises(RowsFailed, match="MODEL_ERROR"):
        score_batch(_plan(SPLIT, fail_on_error=True), MODELS, _batch([1.0, 13.0]))


def test_the_runs_params_reach_every_call_and_an_undeclared_one_is_a_400_per_row() -> None:
    declaring = {
        n: FakeServedModel(n, lambda f: f["x"], input_schema=INPUT, output_schema=OUTPUT, param_defaults={"k": 0})
        for n in ("a1", "b2", "s3")
    }
    plan = dataclasses.replace(_plan(SPLIT), params={"k": 3})
    out = score_batch(plan, declaring, _batch([1.0, 2.0, 3.0, 4.0])).to_pandas()
    assert (out["status_code"] == 200).all()
    assert [m.seen_params for m in (declaring["a1"], declaring["b2"])] == [[{"k": 3}], [{"k": 3}]]  # one call each
    undeclared = score_batch(plan, {n: _model(n, 1.0) for n in ("a1", "b2", "s3")}, _batch([1.0, 2.0])).to_pandas()
    assert undeclared["status_code"].tolist() == [400, 400]
    assert set(undeclared["error_code"]) == {"INVALID_PARAMETER_VALUE"}
    assert undeclared["error_message"].str.contains(r"does not take param\(s\) \['k'\]").all()
