"""``params`` on Kafka, end to end: a request's params reach the model (``ThresholdModel``'s
``threshold`` changes the answer), and a wrongly typed or undeclared param is a 400 for that
request only, answered, dead-lettered and logged, while the requests around it are scored."""

from __future__ import annotations

import json

from conftest_helpers import (
    GOOD,
    answers_for,
    produce,
    read_topic,
    register_model,
    running,
    serving,
    settings_for,
    table_rows,
)

from lakeserve.scoring.testing_models import THRESHOLD_PARAMS, ThresholdModel
from lakeserve.settings import Settings

# GOOD's amount (12.5) scores a probability of about 0.08: 0 at the default threshold 0.5, 1 at 0.01
SENT = {
    b"default": {},
    b"low": {"threshold": 0.01},
    b"high": {"threshold": 0.99},
    b"typed-wrong": {"threshold": "low"},
    b"undeclared": {"temperature": 0.7},
}


def test_params_reach_the_model_and_a_bad_one_fails_its_request_only(stack: Settings, demo_assets: object) -> None:
    version = register_model(stack, ThresholdModel(), "threshold_kafka", params=THRESHOLD_PARAMS)
    settings = serving(settings_for(stack, "kafka-params"), "threshold_kafka", version)
    bodies = [
        json.dumps({"dataframe_records": [GOOD], **({"params": params} if params else {})}).encode()
        for params in SENT.values()
    ]
    with running(settings) as worker:
        produce(settings, bodies, list(SENT))
        answers = {a.key: a for a in answers_for(settings, len(SENT)).values()}
        letters = read_topic(settings, settings.kafka.dead_letter_topic, lambda got: len(got) >= 2)
        worker.loop.flush()

    predictions = {k: answers[k].body["predictions"][0]["prediction"] for k in (b"default", b"low", b"high")}
    assert predictions == {b"default": 0, b"low": 1, b"high": 0}
    for key, named in [(b"typed-wrong", "'threshold'"), (b"undeclared", "'temperature'")]:
        assert answers[key].headers["status"] == "400"
        assert answers[key].body["error_code"] == "INVALID_PARAMETER_VALUE"
        assert named in answers[key].body["message"]
    assert sorted(letter.key for letter in letters) == [b"typed-wrong", b"undeclared"]
    rows = table_rows(settings)
    by_request = {r["request_id"]: r for r in rows.to_dict("records")}
    logged = {answers[k].headers["request-id"]: k for k in SENT}
    assert set(logged) <= set(by_request)
    for request_id, key in logged.items():
        row = by_request[request_id]
        assert json.loads(row["request"]).get("params", {}) == SENT[key]  # the params as sent
        assert row["status_code"] == (400 if key in (b"typed-wrong", b"undeclared") else 200)
