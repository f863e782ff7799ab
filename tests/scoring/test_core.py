"""The scoring core over in-memory fakes: routing, one lookup per service, assembly, errors."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest

from lakeserve.errors import ConfigError
from lakeserve.features.lookup import FeatureTable, InMemoryFeatureLookup
from lakeserve.scoring.core import ScoringCore
from lakeserve.scoring.records import Origin, RequestResult, ScoringRequest
from lakeserve.scoring.settings import EndpointSettings, Limits, Route, ServedEntity, TrafficConfig
from lakeserve.scoring.testing import FakeServedModel, ManualClock

SCHEMA = pa.schema(
    [
        pa.field("customer_id", pa.int64(), nullable=False),
        pa.field("amount", pa.float64(), nullable=False),
        pa.field("avg_amount", pa.float64(), nullable=False),
    ]
)


def endpoint(split: Sequence[tuple[str, int]], shadow: str | None = None, timeout_s: float = 60.0) -> EndpointSettings:
    names = [n for n, _ in split] + ([shadow] if shadow and shadow not in dict(split) else [])
    return EndpointSettings(
        served_entities=[ServedEntity(name=n, entity_name="m", entity_version="1") for n in names],
        traffic_config=TrafficConfig(
            routes=[Route(served_model_name=n, traffic_percentage=p) for n, p in split],
            shadow_model_name=shadow,
        ),
        limits=Limits(timeout_s=timeout_s),
    )


def lookup() -> InMemoryFeatureLookup:
    frame = pd.DataFrame({"customer_id": [1, 2, 3], "avg_amount": [10.0, 20.0, 30.0], "country": ["DE", "FR", "IT"]})
    return InMemoryFeatureLookup({"fs": FeatureTable(["customer_id"], frame)})


def ratio(name: str, version: str = "1") -> FakeServedModel:
    return FakeServedModel(
        name=name,
        fn=lambda f: f["amount"] / f["avg_amount"],
        model_version=version,
        input_schema=SCHEMA,
        feature_service="fs",
        entity_keys=["customer_id"],
    )


def request(body: Any, clock: ManualClock, rid: str = "r1") -> ScoringRequest:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return ScoringRequest(request_id=rid, body=raw, received_at=clock.now(), origin=Origin("http"))


def answer(result: RequestResult) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(result.response_body)
    return document


def records(*rows: dict[str, Any]) -> dict[str, Any]:
    return {"dataframe_records": list(rows)}


def test_features_are_looked_up_once_per_batch_and_request_fields_override() -> None:
    clock, fake, store = ManualClock(), ratio("a"), lookup()
    core = ScoringCore(endpoint([("a", 100)]), {"a": fake}, store, clock=clock.now)
    batch = [
        request(records({"customer_id": 1, "amount": 5.0}, {"customer_id": 2, "amount": 40.0}), clock, "r1"),
        request(records({"customer_id": 3, "amount": 3.0, "avg_amount": 1.5}), clock, "r2"),
        request({"dataframe_split": {"columns": ["customer_id", "amount"], "data": [[1, 1.0]]}}, clock, "r3"),
    ]
    results = core.score(batch)
    assert store.calls == [("fs", 3)]  # one call, distinct keys only
    assert len(fake.seen) == 1
    assert len(fake.seen[0]) == 4
    assert [answer(r) for r in results] == [
        {"predictions": [0.5, 2.0]},
        {"predictions": [2.0]},  # 3.0 / 1.5: the request's avg_amount beats the store's 30.0
        {"predictions": [0.1]},
    ]
    first = results[0].records[0]
    assert first.inputs == {"customer_id": 1, "amount": 5.0}
    assert first.features == {"avg_amount": 10.0, "country": "DE"}
    assert (first.served_entity, first.model_name, first.model_version) == ("a", "fake_model", "1")
    assert results[0].served_model_name == "a"
    assert list(fake.seen[0].columns) == ["customer_id", "amount", "avg_amount"]  # signature columns


def test_unknown_key_is_404_for_its_record_and_the_request_answers_the_first_error() -> None:
    clock = ManualClock()
    core = ScoringCore(endpoint([("a", 100)]), {"a": ratio("a")}, lookup(), clock=clock.now)
    [result] = core.score(
        [request(records({"customer_id": 1, "amount": 5.0}, {"customer_id": 99, "amount": 1.0}), clock)]
    )
    assert (result.status_code, result.error_code) == (404, "RESOURCE_DOES_NOT_EXIST")
    assert answer(result)["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    assert "customer_id=99" in answer(result)["message"]
    ok, missing = result.records
    assert (ok.status_code, ok.prediction) == (200, 0.5)  # the good record was still scored and logged
    assert (missing.status_code, missing.prediction) == (404, None)
    assert result.served_model_name == "a"


def test_missing_key_and_wrong_types_are_400_per_record() -> None:
    clock = ManualClock()
    core = ScoringCore(endpoint([("a", 100)]), {"a": ratio("a")}, lookup(), clock=clock.now)
    body = records({"amount": 5.0}, {"customer_id": 1, "amount": "lots"}, {"customer_id": 2, "amount": 4})
    [result] = core.score([request(body, clock)])
    assert [r.status_code for r in result.records] == [400, 400, 200]
    assert "entity key ['customer_id']" in str(result.records[0].message)
    assert "expects double, got str" in str(result.records[1].message)
    assert result.records[2].prediction == 0.2
    assert result.status_code == 400
    assert result.error_code == "INVALID_PARAMETER_VALUE"


def test_bad_bodies_become_error_results_beside_good_ones() -> None:
    clock = ManualClock()
    core = ScoringCore(endpoint([("a", 100)]), {"a": ratio("a")}, lookup(), clock=clock.now)
    results = core.score([request(b"{oops", clock, "bad"), request(records({"customer_id": 2, "amount": 2.0}), clock)])
    assert [r.status_code for r in results] == [400, 200]
    assert answer(results[0])["error_code"] == "BAD_REQUEST"
    assert [(r.record_index, r.status_code) for r in results[0].records] == [(0, 400)]
    assert answer(results[1]) == {"predictions": [0.1]}


def test_model_error_fails_only_that_entitys_records(caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock()

    def boom(frame: pd.DataFrame) -> pd.Series:  # type: ignore[type-arg]
        raise RuntimeError("weights missing")

    broken = FakeServedModel(name="b", fn=boom, feature_service="fs", entity_keys=["customer_id"])
    core = ScoringCore(endpoint([("a", 50), ("b", 50)]), {"a": ratio("a"), "b": broken}, lookup(), clock=clock.now)
    batch = [request(records({"customer_id": 1 + i % 3, "amount": 1.0}), clock, f"r{i}") for i in range(40)]
    results = core.score(batch)
    by_entity = {r.records[0].served_entity: r for r in results}
    assert set(by_entity) == {"a", "b"}
    assert by_entity["a"].status_code == 200
    assert (by_entity["b"].status_code, by_entity["b"].error_code) == (500, "MODEL_ERROR")
    assert answer(by_entity["b"])["message"] == "served entity 'b' failed on this record"  # the text: log only
    assert "weights missing" in caplog.text


def test_split_is_sticky_by_entity_key_across_requests() -> None:
    clock = ManualClock()
    core = ScoringCore(endpoint([("a", 50), ("b", 50)]), {"a": ratio("a"), "b": ratio("b")}, lookup(), clock=clock.now)
    batch = [request(records({"customer_id": 1 + i % 3, "amount": 1.0}), clock, f"r{i}") for i in range(30)]
    seen: dict[Any, set[str | None]] = {}
    for result in core.score(batch) + core.score(batch):
        rec = result.records[0]
        seen.setdefault(rec.inputs["customer_id"], set()).add(rec.served_entity)
    assert all(len(entities) == 1 for entities in seen.values())


def test_records_without_key_route_by_request_id_when_no_model_needs_features() -> None:
    clock = ManualClock()
    plain = {n: FakeServedModel(name=n, fn=lambda f: f["x"] * 2) for n in ("a", "b")}
    core = ScoringCore(endpoint([("a", 50), ("b", 50)]), plain, lookup(), clock=clock.now)
    batch = [request({"inputs": {"x": [1, 2, 3]}}, clock, f"req-{i}") for i in range(200)]
    results = core.score(batch)
    assert all(answer(r) == {"predictions": [2, 4, 6]} for r in results)
    assert all(len({rec.served_entity for rec in r.records}) == 1 for r in results)
    assert 60 < Counter(r.served_model_name for r in results)["a"] < 140


def test_shadow_copies_are_scored_logged_and_not_answered() -> None:
    clock = ManualClock()
    models = {"a": ratio("a"), "s": ratio("s", version="9")}
    core = ScoringCore(endpoint([("a", 100)], shadow="s"), models, lookup(), clock=clock.now)
    [result] = core.score(
        [request(records({"customer_id": 1, "amount": 5.0}, {"customer_id": 2, "amount": 2.0}), clock)]
    )
    assert answer(result) == {"predictions": [0.5, 0.1]}
    assert [(r.record_index, r.served_entity, r.shadow) for r in result.records] == [
        (0, "a", False),
        (1, "a", False),
        (0, "s", True),
        (1, "s", True),
    ]
    assert result.records[2].prediction == 0.5
    assert result.records[2].model_version == "9"
    assert [r.served_entity for r in result.answered_records()] == ["a", "a"]
    assert result.served_model_name == "a"


def test_records_past_the_timeout_answer_504() -> None:
    clock = ManualClock()
    core = ScoringCore(endpoint([("a", 100)], timeout_s=1.0), {"a": ratio("a")}, lookup(), clock=clock.now)
    old = request(records({"customer_id": 1, "amount": 5.0}), clock, "old")
    clock.advance(2.0)
    fresh = request(records({"customer_id": 1, "amount": 5.0}), clock, "fresh")
    old_result, fresh_result = core.score([old, fresh])
    assert (old_result.status_code, old_result.error_code) == (504, "TIMEOUT")
    assert fresh_result.status_code == 200


def test_records_that_time_out_during_the_model_answer_504() -> None:
    clock = ManualClock()

    def slow(frame: pd.DataFrame) -> pd.Series:  # type: ignore[type-arg]
        clock.advance(5.0)
        return frame["x"]

    slow_model = FakeServedModel(name="a", fn=slow)
    core = ScoringCore(endpoint([("a", 100)], timeout_s=1.0), {"a": slow_model}, lookup(), clock=clock.now)
    [result] = core.score([request({"inputs": {"x": [1]}}, clock)])
    assert result.status_code == 504
    assert result.records[0].prediction is None


def test_multi_output_models_answer_an_object_per_record() -> None:
    clock = ManualClock()
    both = FakeServedModel(
        name="a",
        fn=lambda f: pd.DataFrame({"prediction": (f["x"] > 1).astype(int), "probability": f["x"] / 4}),
    )
    core = ScoringCore(endpoint([("a", 100)]), {"a": both}, lookup(), clock=clock.now)
    [result] = core.score([request({"inputs": {"x": [1, 2]}}, clock)])
    assert answer(result) == {
        "predictions": [{"prediction": 0, "probability": 0.25}, {"prediction": 1, "probability": 0.5}]
    }


def test_swap_replaces_the_table_atomically_and_refuses_a_bad_one() -> None:
    clock = ManualClock()
    old_model, new_model = ratio("a", version="1"), ratio("a", version="2")
    core = ScoringCore(endpoint([("a", 100)]), {"a": old_model}, lookup(), clock=clock.now)
    old_table = core.table
    assert core.swap({"a": new_model}) is old_table
    [result] = core.score([request(records({"customer_id": 1, "amount": 5.0}), clock)])
    assert result.records[0].model_version == "2"
    with pytest.raises(ConfigError, match="no loaded model"):
        core.swap({"b": new_model})
    unknown_service = FakeServedModel(name="a", fn=lambda f: f["x"], feature_service="nope")
    with pytest.raises(ConfigError, match="nope"):
        core.swap({"a": unknown_service})
    assert core.table.models["a"] is new_model  # the failed updates left the last good table serving


def test_timings_and_client_request_id() -> None:
    clock = ManualClock()
    core = ScoringCore(endpoint([("a", 100)]), {"a": ratio("a")}, lookup(), clock=clock.now)
    body = {**records({"customer_id": 1, "amount": 5.0}), "client_request_id": "abc"}
    [result] = core.score([request(body, clock)])
    assert result.client_request_id == "abc"
    assert result.timings.parse_ms > 0
    assert result.timings.model_ms > 0
    assert result.records[0].execution_time_ms == result.timings.model_ms


def test_poison_record_fails_alone_and_its_batch_is_answered() -> None:
    clock = ManualClock()

    def picky(frame: pd.DataFrame) -> pd.Series:  # type: ignore[type-arg]
        if (frame["amount"] < 0).any():
            raise ValueError("negative amount")
        return frame["amount"] * 2

    model = FakeServedModel(name="a", fn=picky, feature_service="fs", entity_keys=["customer_id"])
    core = ScoringCore(endpoint([("a", 100)]), {"a": model}, lookup(), clock=clock.now)
    amounts = [1.0, 2.0, -1.0, 3.0, 4.0, 5.0, 6.0]
    batch = [request(records({"customer_id": 1, "amount": a}), clock, f"r{i}") for i, a in enumerate(amounts)]
    results = core.score(batch)
    assert [r.status_code for r in results] == [200, 200, 500, 200, 200, 200, 200]
    assert answer(results[2])["error_code"] == "MODEL_ERROR"
    assert "negative amount" not in answer(results[2])["message"]
    assert [answer(r)["predictions"] for r in results if r.ok] == [[2.0], [4.0], [6.0], [8.0], [10.0], [12.0]]


def test_valid_rows_keep_integer_types_beside_invalid_ones() -> None:
    """A bad row must not turn the good rows' integer column into floats (models refuse that)."""
    import pyarrow as pa

    clock = ManualClock()
    schema = pa.schema([pa.field("customer_id", pa.int64()), pa.field("hour", pa.int64())])
    model = FakeServedModel(name="a", fn=lambda f: f["hour"] * 1, input_schema=schema, feature_service="fs",
                            entity_keys=["customer_id"])
    core = ScoringCore(endpoint([("a", 100)]), {"a": model}, lookup(), clock=clock.now)
    batch = [request(records({"customer_id": 1, "hour": h}), clock, f"r{i}") for i, h in enumerate([3, "late", 5])]
    results = core.score(batch)
    assert [r.status_code for r in results] == [200, 400, 200]
    assert str(model.seen[0]["hour"].dtype) == "int64"


def test_a_field_missing_from_one_record_of_a_request_is_null_there() -> None:
    clock, fake = ManualClock(), ratio("a")
    core = ScoringCore(endpoint([("a", 100)]), {"a": fake}, lookup(), clock=clock.now)
    body = records({"customer_id": 1, "amount": 5.0, "avg_amount": 2.0}, {"customer_id": 2, "amount": 4.0})
    [result] = core.score([request(body, clock)])
    assert answer(result) == {"predictions": [2.5, 0.2]}  # the looked-up 20.0 fills the gap
    assert [r.inputs for r in result.records] == [
        {"customer_id": 1, "amount": 5.0, "avg_amount": 2.0},
        {"customer_id": 2, "amount": 4.0, "avg_amount": None},
    ]
    assert len(fake.seen) == 1  # one frame for the model's batch
    assert len(fake.seen[0]) == 2


@pytest.mark.parametrize(
    "body",
    [
        {"dataframe_split": {"columns": ["customer_id", "amount"], "data": [[1, 5.0]], "index": [9]}},
        {"instances": [{"customer_id": 1, "amount": 5.0}]},
        {"inputs": {"customer_id": 1, "amount": 5.0}},
        {"inputs": {"customer_id": [1], "amount": [5.0]}},
    ],
)
def test_every_body_format_scores_the_same(body: dict[str, Any]) -> None:
    clock = ManualClock()
    core = ScoringCore(endpoint([("a", 100)]), {"a": ratio("a")}, lookup(), clock=clock.now)
    [result] = core.score([request(body, clock)])
    assert answer(result) == {"predictions": [0.5]}
    assert result.records[0].inputs == {"customer_id": 1, "amount": 5.0}


def test_the_row_logs_the_value_the_model_saw_for_a_null_request_field() -> None:
    """A null field falls back to the looked-up feature for the model; the table shows that value."""
    from lakeserve.monitoring.inference_rows import to_arrow
    from lakeserve.monitoring.table_schema import inference_schema

    clock, fake = ManualClock(), ratio("a")
    core = ScoringCore(endpoint([("a", 100)]), {"a": fake}, lookup(), clock=clock.now)
    [result] = core.score([request(records({"customer_id": 1, "amount": 5.0, "avg_amount": None}), clock)])
    assert answer(result) == {"predictions": [0.5]}  # 5.0 / the store's 10.0
    assert fake.seen[0]["avg_amount"].tolist() == [10.0]
    schema = inference_schema(
        {"customer_id": pa.int64(), "amount": pa.float64(), "avg_amount": pa.float64()}, {"prediction": pa.float64()}
    )
    row = to_arrow([result], schema, "ep", 1.0, 1 << 20).to_pylist()[0]
    assert (row["avg_amount"], row["amount"], row["prediction"]) == (10.0, 5.0, 0.5)


def test_an_answer_over_max_response_bytes_is_replaced_by_a_500_and_the_records_keep_their_predictions() -> None:
    clock = ManualClock()
    capped = endpoint([("a", 100)]).model_copy(update={"limits": Limits(max_response_bytes=120)})
    core = ScoringCore(capped, {"a": ratio("a")}, lookup(), clock=clock.now)
    small = request(records({"customer_id": 1, "amount": 5.0}), clock, rid="small")
    large = request(records(*[{"customer_id": 2, "amount": 4.0}] * 30), clock, rid="large")
    ok, refused = core.score([small, large])
    assert (ok.status_code, answer(ok)) == (200, {"predictions": [0.5]})
    assert (refused.status_code, refused.error_code) == (500, "MAX_RESPONSE_SIZE_EXCEEDED")
    assert answer(refused) == {"error_code": "MAX_RESPONSE_SIZE_EXCEEDED", "message": refused.message}
    assert "over the endpoint's limit of 120 bytes (limits.max_response_bytes)" in str(refused.message)
    assert len(refused.response_body) <= 300
    assert {(r.status_code, r.error_code, r.prediction) for r in refused.records} == {
        (500, "MAX_RESPONSE_SIZE_EXCEEDED", 0.2)
    }
