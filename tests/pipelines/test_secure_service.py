"""The scoring service end to end over the session broker's SASL_SSL listener (SCRAM-SHA-512, TLS)."""

from __future__ import annotations

import pandas as pd
from conftest_helpers import answers_for, produce, running, table_rows
from secure_kafka import secure_kafka

from lakeserve.jobs.demo_data import request_bodies
from lakeserve.settings import Settings


def test_the_service_answers_and_logs_over_sasl_ssl(service_settings: Settings, demo_assets) -> None:
    secure = secure_kafka(service_settings, "SASL_SSL")
    assert secure.kafka.client_options()["sasl_mechanism"] == "SCRAM-SHA-512"
    customers = pd.read_parquet(demo_assets.data_dir / "customers.parquet")
    bodies = request_bodies(customers, 20, seed=13)
    with running(secure) as worker:  # consumer, producer and admin all log in over TLS
        produce(secure, bodies)
        answers = answers_for(secure, len(bodies))
        worker.loop.flush()
    assert len(answers) == len(bodies)
    assert {a.headers["status"] for a in answers.values()} == {"200"}
    rows = table_rows(secure)
    assert set(rows["request_id"]) == set(answers)
    assert (rows["status_code"] == 200).all()
