"""The batch job scores as the stream does: same predictions, same routing, features as of each
row's time, bad rows recorded rather than raised."""

from __future__ import annotations

import pandas as pd
import pytest
from batch_helpers import LATER, PIT_CUSTOMER, ParityRun

from lakeserve.features import demo_repo
from lakeserve.jobs.demo_data import REQUEST_FIELDS

PREDICTIONS = ["prediction", "probability"]


def _by_request(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.set_index("client_request_id").sort_index()


def test_batch_scores_equal_stream_scores(parity_run: ParityRun) -> None:
    stream = _by_request(parity_run.stream)
    batch = _by_request(parity_run.batch).loc[stream.index]
    assert len(stream) == 40
    assert (stream["status_code"] == 200).all()
    assert (batch["status_code"] == 200).all(), batch.loc[batch.status_code != 200, "error_message"]
    assert (batch["prediction"].astype("int64") == stream["prediction"].astype("int64")).all()
    assert (batch["probability"] - stream["probability"]).abs().max() <= 1e-9
    # the features batch joined are the values the stream looked up online
    for feature in demo_repo.V1_FEATURES:
        assert (batch[feature].astype("float64") - stream[feature].astype("float64")).abs().max() <= 1e-12, feature


def test_routing_agrees_between_batch_and_stream(parity_run: ParityRun) -> None:
    stream = _by_request(parity_run.stream)
    batch = _by_request(parity_run.batch).loc[stream.index]
    assert (batch["served_entity"] == stream["served_entity"]).all()
    assert (batch["model_version"] == stream["model_version"]).all()
    assert set(batch["served_entity"]) == {"champion", "challenger"}
    per_customer = parity_run.batch.groupby("customer_id")["served_entity"].nunique()
    assert (per_customer == 1).all()


def test_features_are_taken_as_of_each_rows_time(parity_run: ParityRun) -> None:
    batch = _by_request(parity_run.batch)
    first = parity_run.customers.set_index("customer_id").loc[PIT_CUSTOMER]
    later = parity_run.later.set_index("customer_id").loc[PIT_CUSTOMER]
    before, after = batch.loc["pit-before"], batch.loc["pit-after"]
    assert before["event_timestamp"] < parity_run.now + LATER < after["event_timestamp"]
    assert before["chargeback_rate"] == pytest.approx(first["chargeback_rate"])  # not the later value
    assert before["account_age_days"] == first["account_age_days"]
    assert after["chargeback_rate"] == pytest.approx(later["chargeback_rate"])
    assert after["account_age_days"] == later["account_age_days"]
    assert after["probability"] != pytest.approx(before["probability"])
    # before the first snapshot there is no feature row at all
    early = batch.loc["pit-no-snapshot-yet"]
    assert (early["status_code"], early["error_code"]) == (404, "RESOURCE_DOES_NOT_EXIST")


def test_bad_rows_are_recorded_and_the_rest_scored(parity_run: ParityRun) -> None:
    batch = _by_request(parity_run.batch)
    report = parity_run.report
    assert report.rows == len(batch) == 45
    assert report.by_status == {200: 42, 400: 1, 404: 2}
    unknown, null = batch.loc["bad-unknown-customer"], batch.loc["bad-null-amount"]
    assert (unknown["status_code"], unknown["error_code"]) == (404, "RESOURCE_DOES_NOT_EXIST")
    assert (null["status_code"], null["error_code"]) == (400, "INVALID_PARAMETER_VALUE")
    assert "amount" in null["error_message"]
    assert pd.isna(null["probability"])
    assert report.models == {"champion": "card_fraud/1", "challenger": "card_fraud/2"}


def test_output_carries_inputs_features_model_and_time(parity_run: ParityRun) -> None:
    columns = list(parity_run.batch.columns)
    expected_inputs = ["client_request_id", *REQUEST_FIELDS, "event_timestamp"]
    assert columns[: len(expected_inputs)] == expected_inputs
    assert set(demo_repo.V2_FEATURES) <= set(columns)
    for column in ["served_entity", "model_name", "model_version", "is_shadow", *PREDICTIONS, "status_code",
                   "error_code", "error_message", "scored_at"]:  # fmt: skip
        assert column in columns
    scored_at = parity_run.batch["scored_at"]
    assert scored_at.nunique() == 1
    assert scored_at.dt.tz is not None
    assert scored_at.iloc[0] == parity_run.report.scored_at
    # a champion row did not use the challenger's extra feature; a challenger row did
    ok = parity_run.batch[parity_run.batch.status_code == 200]
    assert ok.loc[ok.served_entity == "champion", "home_country"].isna().all()
    assert ok.loc[ok.served_entity == "challenger", "home_country"].notna().all()
